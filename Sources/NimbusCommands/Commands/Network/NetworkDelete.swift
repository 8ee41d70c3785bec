import ArgumentParser
import NimbusCore
import NimbusInstances
import NimbusMachines

struct NetworkDelete: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "delete", abstract: "Delete a network no instance uses (needs root).")

    @OptionGroup var global: Flags.Global
    @OptionGroup var network: NetworkNameArgument

    func run() async throws {
        let context = try CommandContext(global: global)
        try await context.manager.networks.delete(network.name)
    }
}
