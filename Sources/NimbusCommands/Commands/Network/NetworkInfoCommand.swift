import ArgumentParser
import NimbusCore
import NimbusInstances
import NimbusMachines

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
        Console.result(OutputRenderer.fields(lines))
    }
}
