import ArgumentParser
import NimbusInstances

/// `nimbus purge`.
struct InstancePurge: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "purge", abstract: "Remove every deleted instance for good.")

    @OptionGroup var global: Flags.Global

    func run() async throws {
        let context = try CommandContext(global: global)
        for name in try await context.manager.purge() { Console.status("purged \(name)") }
    }
}
