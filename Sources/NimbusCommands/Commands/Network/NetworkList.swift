import ArgumentParser
import NimbusCore
import NimbusInstances
import NimbusMachines

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
