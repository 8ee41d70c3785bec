import ArgumentParser
import NimbusInstances

struct SnapshotRestore: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "restore", abstract: "Return a stopped instance's disk to a snapshot.")

    @OptionGroup var global: Flags.Global
    @OptionGroup var instance: Flags.Instance
    @Argument(help: "The snapshot's name.")
    var snapshot: String

    func run() async throws {
        let context = try CommandContext(global: global)
        try await context.manager.restoreSnapshot(try instance.instanceName, named: snapshot)
    }
}
