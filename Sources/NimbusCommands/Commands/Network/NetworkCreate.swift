import ArgumentParser
import NimbusCore
import NimbusInstances
import NimbusMachines

struct NetworkCreate: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "create", abstract: "Make a network (needs root).")

    @OptionGroup var global: Flags.Global
    @OptionGroup var network: NetworkNameArgument
    @Option(help: "The subnet, like 192.168.100.0/24 (default: a free private /24).")
    var subnet: String?
    @Flag(help: "Masquerade the network's traffic to the outside (nftables).")
    var nat = false
    @Option(help: "Machine driver whose instances join it: qemu or libvirt (a libvirt network).")
    var driver: DriverKind = .qemu
    @Option(help: "libvirt URI of the daemon the network lives on, with --driver libvirt (default qemu:///system).")
    var connect: String?

    func validate() throws {
        try validating {
            if let subnet { _ = try IPv4Subnet(parsing: subnet, what: "--subnet") }
            _ = try DriverChoice(kind: driver, connect: connect)
        }
    }

    func run() async throws {
        let context = try CommandContext(global: global)
        let info = try await context.manager.networks.create(
            name: network.name, subnet: try subnet.map { try IPv4Subnet(parsing: $0, what: "--subnet") }, nat: nat,
            driver: try DriverChoice(kind: driver, connect: connect))
        Console.result("\(info.name) \(info.subnet) (bridge \(info.bridge), names under \(info.domain))\n")
    }
}
