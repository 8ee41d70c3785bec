import ArgumentParser
import Foundation
import NimbusImages

/// `nimbus image alias NAME REF`: a short name for a reference; without arguments, lists them.
struct ImageAlias: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "alias",
        abstract: "Name a reference (nimbus image alias web ubuntu:24.04); with no arguments, list aliases.")

    @OptionGroup var global: Flags.Global
    @OptionGroup var output: Flags.Output

    @Flag(name: .long, help: "Remove the alias NAME.")
    var remove = false

    @Argument(help: "The alias.")
    var name: String?

    @Argument(help: "The reference it stands for.")
    var reference: String?

    func validate() throws {
        if remove, name == nil || reference != nil { throw ValidationError("--remove takes the alias name alone") }
        if !remove, name != nil, reference == nil { throw ValidationError("give the reference the alias stands for") }
    }

    func run() async throws {
        let store = try ImageCommandSupport.store(global: global)
        if let name {
            try await store.setAlias(name, to: remove ? nil : reference)
            return
        }
        let aliases = try await store.aliases().sorted { $0.key < $1.key }
        print(
            try OutputRenderer.render(
                Dictionary(uniqueKeysWithValues: aliases.map { ($0.key, $0.value) }), columns: ["alias", "reference"],
                rows: aliases.map { [$0.key, $0.value] }, format: output.format), terminator: "")
    }
}
