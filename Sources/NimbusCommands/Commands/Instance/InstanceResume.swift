import ArgumentParser
import NimbusInstances

/// `nimbus resume NAME... | --all`.
struct InstanceResume: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "resume", abstract: "Resume suspended instances.")

    @OptionGroup var global: Flags.Global
    @OptionGroup var selection: Flags.Selection

    func run() async throws {
        let context = try CommandContext(global: global)
        try await AggregateError.forEach(try selection.resolve(context)) { try await context.manager.resume($0) }
    }
}
