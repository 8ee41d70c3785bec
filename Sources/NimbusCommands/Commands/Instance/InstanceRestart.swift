import ArgumentParser
import NimbusInstances

/// `nimbus restart NAME... | --all`.
struct InstanceRestart: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "restart", abstract: "Stop, then start instances.")

    @OptionGroup var global: Flags.Global
    @OptionGroup var selection: Flags.Selection

    @Option(help: "Seconds to wait for each instance to be ready.")
    var timeout: Int = 600

    func run() async throws {
        let context = try CommandContext(global: global)
        try await AggregateError.forEach(try selection.resolve(context)) { name in
            try await context.manager.stop(name, force: false, timeout: .seconds(context.config.stopTimeout))
            try await context.manager.start(name, wait: true, timeout: .seconds(timeout))
        }
    }
}
