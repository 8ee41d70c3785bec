import ArgumentParser
import Foundation
import NimbusCore
import NimbusInstances

/// `nimbus ssh-config NAME`: a block for ~/.ssh/config.
struct AccessSSHConfig: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ssh-config", abstract: "Print an ~/.ssh/config block for reaching an instance with plain ssh.")

    @OptionGroup var global: Flags.Global
    @OptionGroup var instance: Flags.Instance

    func run() async throws {
        let context = try CommandContext(global: global)
        Console.result(try context.manager.sshConfigBlock(try instance.instanceName))
    }
}
