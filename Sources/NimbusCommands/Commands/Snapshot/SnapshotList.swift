import ArgumentParser
import NimbusInstances

struct SnapshotList: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "list", abstract: "List an instance's snapshots.")

    @OptionGroup var global: Flags.Global
    @OptionGroup var output: Flags.Output
    @OptionGroup var instance: Flags.Instance

    func run() async throws {
        let context = try CommandContext(global: global)
        let snapshots = try await context.manager.snapshots(try instance.instanceName)
        Console.result(
            try OutputRenderer.render(
                snapshots, columns: ["name", "created", "vm-size"],
                rows: snapshots.map { [$0.name, $0.created, $0.vmStateSize] }, format: output.format))
    }
}
