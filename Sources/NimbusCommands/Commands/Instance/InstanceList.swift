import ArgumentParser
import NimbusInstances

/// `nimbus list`: every instance, one row each.
struct InstanceList: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "list", abstract: "List instances.", aliases: ["ls"])

    @OptionGroup var global: Flags.Global
    @OptionGroup var output: Flags.Output

    func run() async throws {
        let context = try CommandContext(global: global)
        let infos = await context.manager.list()
        if infos.isEmpty && output.format == .table {
            Console.status("no instances: `nimbus launch` makes one")
            return
        }
        Console.result(try InstanceTable.render(infos, format: output.format))
    }
}
