import ArgumentParser
import NimbusCore
import NimbusInstances

struct VolumeCreate: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "create", abstract: "Make a data volume.")

    @OptionGroup var global: Flags.Global
    @OptionGroup var volume: VolumeNameArgument
    @Option(help: "The volume's size, like 20G.")
    var size: String

    func run() async throws {
        let context = try CommandContext(global: global)
        let info = try await context.manager.volumes.create(
            name: volume.name, size: try ByteSize(parsing: size, what: "--size"))
        Console.result("\(info.name) \(info.size)\n")
    }
}
