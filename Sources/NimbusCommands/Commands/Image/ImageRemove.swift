import ArgumentParser
import Foundation
import NimbusCore
import NimbusImages

/// `nimbus image rm REF...`: removes cached images no instance uses; reports every failure.
struct ImageRemove: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "rm", abstract: "Remove cached images (refused while an instance's disk is backed by one).",
        aliases: ["remove"])

    @OptionGroup var global: Flags.Global

    @Argument(help: "References, import names or sha256 prefixes.")
    var references: [String]

    func validate() throws {
        guard !references.isEmpty else { throw ValidationError("name at least one image to remove") }
    }

    func run() async throws {
        let store = try ImageCommandSupport.store(global: global)
        var failures: [String] = []
        var worst: NimbusError?
        for reference in references {
            do {
                let image = try await store.remove(reference)
                print("removed \(image.reference) (\(image.sha256.prefix(12)))")
            } catch {
                failures.append(error.message)
                worst = worst ?? error
            }
        }
        guard let worst else { return }
        if failures.count == 1 { throw worst }
        throw NimbusError(worst.code, failures.joined(separator: "\n"))
    }
}
