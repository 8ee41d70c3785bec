import ArgumentParser
import NimbusInstances

/// `nimbus stop NAME... | --all`.
struct InstanceStop: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "stop", abstract: "Stop instances: ACPI power-off, forced after --timeout.")

    @OptionGroup var global: Flags.Global
    @OptionGroup var selection: Flags.Selection

    @Flag(help: "Stop at once, like pulling the plug.")
    var force = false

    @Option(help: "Seconds to wait for the guest to power off before forcing it (default from config.yaml, else 60).")
    var timeout: Int?

    func run() async throws {
        let context = try CommandContext(global: global)
        let seconds = timeout ?? context.config.stopTimeout
        try await AggregateError.forEach(try selection.resolve(context)) { name in
            try await context.manager.stop(name, force: force, timeout: .seconds(seconds))
        }
    }
}
