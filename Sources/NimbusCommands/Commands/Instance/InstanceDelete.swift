import ArgumentParser
import NimbusInstances

/// `nimbus delete NAME... [--purge]`.
struct InstanceDelete: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "delete", abstract: "Stop and delete instances (recoverable until purged).")

    @OptionGroup var global: Flags.Global
    @OptionGroup var selection: Flags.Selection

    @Flag(help: "Remove the instances and their disks for good (their data volumes are kept, and given back).")
    var purge = false

    func run() async throws {
        let context = try CommandContext(global: global)
        try await AggregateError.forEach(try selection.resolve(context)) {
            try await context.manager.delete($0, purge: purge)
        }
    }
}
