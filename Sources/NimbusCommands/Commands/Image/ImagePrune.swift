import ArgumentParser
import Foundation
import NimbusCore
import NimbusImages

/// `nimbus image prune`: removes every cached image no instance uses, and says which it kept and why.
struct ImagePrune: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "prune", abstract: "Remove cached images that no instance's disk is backed by.")

    @OptionGroup var global: Flags.Global
    @OptionGroup var output: Flags.Output

    func run() async throws {
        let store = try ImageCommandSupport.store(global: global)
        let report = try await store.prune()
        var rows = report.removed.map { ["removed", $0.reference, String($0.sha256.prefix(12)), "unused"] }
        rows += report.kept.map {
            [
                "kept", $0.image.reference, String($0.image.sha256.prefix(12)),
                "backs " + $0.usedBy.joined(separator: ", "),
            ]
        }
        print(
            try OutputRenderer.render(
                report, columns: ["action", "reference", "sha256", "why"], rows: rows, format: output.format),
            terminator: "")
        if output.format == .table, !global.quiet {
            FileHandle.standardError.write(Data("freed \(ByteSize(bytes: report.freed).humanReadable)\n".utf8))
        }
    }
}
