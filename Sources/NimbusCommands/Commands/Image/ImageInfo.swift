import ArgumentParser
import Foundation
import NimbusCore
import NimbusImages

/// `nimbus image info REF`: one cached image in full.
struct ImageInfo: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "info", abstract: "Show a cached image: where it came from, its checksums, its format and size.")

    @OptionGroup var global: Flags.Global
    @OptionGroup var output: Flags.Output

    @Argument(help: "A reference it was pulled as, an import name, or a sha256 prefix.")
    var reference: String

    func run() async throws {
        let store = try ImageCommandSupport.store(global: global)
        let image = try await store.info(reference)
        let users = try await store.usage()[image.sha256] ?? []
        let fields: [(String, String)] = [
            ("reference", image.reference), ("references", image.references.joined(separator: ", ")),
            ("distribution", image.distribution?.rawValue ?? "-"), ("release", image.release ?? "-"),
            ("codename", image.codename ?? "-"), ("version", image.version ?? "-"),
            ("arch", image.arch?.rawValue ?? "-"),
            ("format", image.format.rawValue),
            ("virtual size", "\(ByteSize(bytes: image.virtualSize).humanReadable) (\(image.virtualSize) bytes)"),
            ("size", "\(ByteSize(bytes: image.size).humanReadable) (\(image.size) bytes)"),
            ("sha256", image.sha256), ("path", image.path), ("source", image.source),
            ("pulled", ISO8601DateFormatter().string(from: image.pulledAt)),
            ("used by", users.isEmpty ? "-" : users.joined(separator: ", ")),
        ]
        print(
            try OutputRenderer.render(
                image, columns: ["field", "value"], rows: fields.map { [$0.0, $0.1] }, format: output.format),
            terminator: "")
    }
}
