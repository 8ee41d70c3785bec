import ArgumentParser
import Foundation
import NimbusCore
import NimbusInstances

/// `nimbus console NAME`: the serial console, interactively.
struct AccessConsole: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "console", abstract: "Attach to an instance's serial console (Ctrl-] detaches).")

    @OptionGroup var global: Flags.Global
    @OptionGroup var instance: Flags.Instance

    func run() async throws {
        let context = try CommandContext(global: global)
        try await context.manager.attachConsole(try instance.instanceName)
    }
}
