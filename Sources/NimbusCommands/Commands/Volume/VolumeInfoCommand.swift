import ArgumentParser
import NimbusCore
import NimbusInstances

struct VolumeInfoCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "info", abstract: "Show a data volume.")

    @OptionGroup var global: Flags.Global
    @OptionGroup var output: Flags.Output
    @OptionGroup var volume: VolumeNameArgument

    func run() async throws {
        let context = try CommandContext(global: global)
        let info = try context.manager.volumes.info(volume.name)
        if output.format != .table {
            Console.result(try OutputRenderer.render(info, columns: [], rows: [], format: output.format))
            return
        }
        let lines = [
            ("Name", info.name), ("Size", info.size), ("Used", info.used ?? "-"),
            ("Attached to", info.attachedTo ?? "-"), ("Disk", info.path),
        ]
        Console.result(OutputRenderer.fields(lines))
    }
}
