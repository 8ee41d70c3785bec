import ArgumentParser
import NimbusCore
import NimbusInstances

struct VolumeDelete: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "delete", abstract: "Delete a data volume and its data (refused while attached).")

    @OptionGroup var global: Flags.Global
    @OptionGroup var volume: VolumeNameArgument

    func run() async throws {
        let context = try CommandContext(global: global)
        try await context.manager.volumes.delete(volume.name)
    }
}
