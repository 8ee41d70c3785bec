import ArgumentParser
import NimbusInstances

/// `nimbus suspend NAME... | --all`.
struct InstanceSuspend: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "suspend", abstract: "Pause running instances (their memory stays in QEMU).")

    @OptionGroup var global: Flags.Global
    @OptionGroup var selection: Flags.Selection

    func run() async throws {
        let context = try CommandContext(global: global)
        try await AggregateError.forEach(try selection.resolve(context)) { try await context.manager.suspend($0) }
    }
}
