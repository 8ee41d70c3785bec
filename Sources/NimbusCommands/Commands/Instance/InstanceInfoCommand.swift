import ArgumentParser
import NimbusInstances

/// `nimbus info NAME...`: the details of instances.
struct InstanceInfoCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "info", abstract: "Show instances in detail.")

    @OptionGroup var global: Flags.Global
    @OptionGroup var output: Flags.Output
    @OptionGroup var selection: Flags.Selection

    func run() async throws {
        let context = try CommandContext(global: global)
        var infos: [InstanceInfo] = []
        try await AggregateError.forEach(try selection.resolve(context)) { name in
            infos.append(try await context.manager.info(name))
        }
        if output.format == .table {
            Console.result(infos.map(InstanceTable.details).joined(separator: "\n"))
        } else {
            Console.result(try InstanceTable.render(infos, format: output.format))
        }
    }
}
