import ArgumentParser
import NimbusCore
import NimbusInstances

struct VolumeList: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "list", abstract: "List data volumes.")

    @OptionGroup var global: Flags.Global
    @OptionGroup var output: Flags.Output

    func run() async throws {
        let context = try CommandContext(global: global)
        let volumes = context.manager.volumes.list()
        Console.result(
            try OutputRenderer.render(
                volumes, columns: ["name", "size", "used", "attached to"],
                rows: volumes.map { [$0.name, $0.size, $0.used ?? "-", $0.attachedTo ?? "-"] }, format: output.format))
    }
}
