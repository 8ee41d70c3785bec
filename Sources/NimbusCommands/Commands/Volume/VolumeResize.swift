import ArgumentParser
import NimbusCore
import NimbusInstances

struct VolumeResize: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "resize",
        abstract: "Grow a data volume; its filesystem grows at the instance's next start.")

    @OptionGroup var global: Flags.Global
    @OptionGroup var volume: VolumeNameArgument
    @Option(help: "The new size, larger than the current one, like 40G.")
    var size: String

    func run() async throws {
        let context = try CommandContext(global: global)
        let info = try await context.manager.volumes.resize(
            volume.name, size: try ByteSize(parsing: size, what: "--size"))
        Console.result("\(info.name) \(info.size)\n")
    }
}
