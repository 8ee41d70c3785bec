import ArgumentParser
import NimbusInstances

struct SnapshotDelete: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "delete", abstract: "Delete a snapshot.")

    @OptionGroup var global: Flags.Global
    @OptionGroup var instance: Flags.Instance
    @Argument(help: "The snapshot's name.")
    var snapshot: String

    func run() async throws {
        let context = try CommandContext(global: global)
        try await context.manager.deleteSnapshot(try instance.instanceName, named: snapshot)
    }
}
