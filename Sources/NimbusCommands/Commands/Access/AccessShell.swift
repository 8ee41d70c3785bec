import ArgumentParser
import Foundation
import NimbusCore
import NimbusInstances

/// `nimbus shell NAME`: an interactive login shell.
struct AccessShell: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "shell", abstract: "Open a shell in an instance.")

    @OptionGroup var global: Flags.Global
    @OptionGroup var instance: Flags.Instance

    func run() async throws {
        let context = try CommandContext(global: global)
        let ssh = try await context.manager.sshAccess(try instance.instanceName)
        try ssh.prepare()
        throw SSHAccess.execReplacingProcess(
            "ssh", ssh.sshArguments(command: [], terminal: Console.stdinIsTerminal, batch: false))
    }
}
