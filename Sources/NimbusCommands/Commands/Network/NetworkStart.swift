import ArgumentParser
import NimbusCore
import NimbusInstances
import NimbusMachines

struct NetworkStart: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "start", abstract: "Bring back a network's bridge, dnsmasq and NAT (after a reboot; needs root).")

    @OptionGroup var global: Flags.Global
    @OptionGroup var network: NetworkNameArgument

    func run() async throws {
        let context = try CommandContext(global: global)
        try await context.manager.networks.start(network.name)
    }
}
