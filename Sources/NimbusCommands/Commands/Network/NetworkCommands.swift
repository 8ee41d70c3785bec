import ArgumentParser
import NimbusCore
import NimbusInstances
import NimbusMachines

/// `nimbus network create|list|info|start|delete`.
struct NetworkCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "network",
        abstract: "Host networks on which instances reach each other and the host by name.",
        discussion: """
            A network is a bridge on this host with a dnsmasq serving its instances' names and fixed \
            addresses; instances join with `nimbus launch --network NAME[:ADDRESS]`. Making, starting and \
            deleting a network needs root; launching onto one does not, once root has made \
            /usr/lib/qemu/qemu-bridge-helper setuid. With --driver libvirt the network is a libvirt network \
            (nimbus-NAME) on the daemon of --connect, and its instances run there.
            """,
        subcommands: [
            NetworkCreate.self, NetworkList.self, NetworkInfoCommand.self, NetworkStart.self, NetworkDelete.self,
        ])
}

/// A network name argument, checked by the parser.
struct NetworkNameArgument: ParsableArguments {
    @Argument(help: "The network's name (a DNS label: a-z, 0-9, '-').")
    var name: String

    func validate() throws {
        try validating { try NetworkSpec.checkName(name) }
    }
}

struct NetworkCreate: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "create", abstract: "Make a network (needs root).")

    @OptionGroup var global: Flags.Global
    @OptionGroup var network: NetworkNameArgument
    @Option(help: "The subnet, like 192.168.100.0/24 (default: a free private /24).")
    var subnet: String?
    @Flag(help: "Masquerade the network's traffic to the outside (nftables).")
    var nat = false
    @Option(help: "Machine driver whose instances join it: qemu or libvirt (a libvirt network).")
    var driver: String = "qemu"
    @Option(help: "libvirt URI of the daemon the network lives on, with --driver libvirt (default qemu:///system).")
    var connect: String?

    func validate() throws {
        try validating {
            if let subnet { _ = try IPv4Subnet(parsing: subnet, what: "--subnet") }
            guard DriverChoice.names.contains(driver) else {
                throw NimbusError(
                    .invalidArgument,
                    "--driver \(driver) is not one of \(DriverChoice.names.joined(separator: ", "))")
            }
            _ = try DriverChoice(name: driver, connect: connect, pool: nil)
        }
    }

    func run() async throws {
        let context = try CommandContext(global: global)
        let info = try await context.manager.networks.create(
            name: network.name, subnet: try subnet.map { try IPv4Subnet(parsing: $0, what: "--subnet") }, nat: nat,
            driver: try DriverChoice(name: driver, connect: connect, pool: nil))
        Console.result("\(info.name) \(info.subnet) (bridge \(info.bridge), names under \(info.domain))\n")
    }
}

struct NetworkList: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "list", abstract: "List networks.")

    @OptionGroup var global: Flags.Global
    @OptionGroup var output: Flags.Output

    func run() async throws {
        let context = try CommandContext(global: global)
        let networks = await context.manager.networks.list()
        Console.result(
            try OutputRenderer.render(
                networks, columns: ["name", "subnet", "bridge", "nat", "state", "instances"],
                rows: networks.map {
                    [$0.name, $0.subnet, $0.bridge, $0.nat ? "yes" : "no", $0.state, String($0.instances.count)]
                }, format: output.format))
    }
}

struct NetworkInfoCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "info", abstract: "Show a network.")

    @OptionGroup var global: Flags.Global
    @OptionGroup var output: Flags.Output
    @OptionGroup var network: NetworkNameArgument

    func run() async throws {
        let context = try CommandContext(global: global)
        let info = try await context.manager.networks.info(network.name)
        if output.format != .table {
            Console.result(try OutputRenderer.render(info, columns: [], rows: [], format: output.format))
            return
        }
        var lines = [
            ("Name", info.name), ("Subnet", info.subnet), ("Gateway", "\(info.gateway) (this host, DNS)"),
            ("Bridge", info.bridge), ("Domain", info.domain), ("NAT", info.nat ? "yes" : "no"),
            ("Driver", info.driver),
            ("State", info.problems.isEmpty ? info.state : "\(info.state): \(info.problems.joined(separator: ", "))"),
        ]
        lines += info.instances.map { ("Instance", "\($0.name) \($0.address) \($0.mac ?? "")") }
        let width = (lines.map(\.0.count).max() ?? 0) + 1
        Console.result(
            lines.map { $0.0.padding(toLength: width, withPad: " ", startingAt: 0) + " " + $0.1 }
                .joined(separator: "\n") + "\n")
    }
}

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
