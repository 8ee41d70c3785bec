import ArgumentParser
import NimbusInstances

struct SnapshotCreate: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "create", abstract: "Snapshot a stopped instance.")

    @OptionGroup var global: Flags.Global
    @OptionGroup var instance: Flags.Instance
    @Argument(help: "The snapshot's name (default: snapshot-<date>).")
    var snapshot: String?

    func run() async throws {
        let context = try CommandContext(global: global)
        let name = try await context.manager.createSnapshot(try instance.instanceName, named: snapshot)
        Console.result("\(name)\n")
    }
}
