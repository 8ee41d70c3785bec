import ArgumentParser
import Foundation
import NimbusCore
import NimbusInstances

/// `nimbus exec NAME -- CMD ARGS...`: the remote command's streams and exit status are nimbus's own.
struct AccessExec: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "exec", abstract: "Run a command in an instance.",
        discussion: "Standard input, output and error are streamed; the exit status is the command's.")

    @OptionGroup var global: Flags.Global
    @OptionGroup var instance: Flags.Instance

    @Argument(parsing: .postTerminator, help: "The command and its arguments, after --.")
    var command: [String] = []

    func validate() throws {
        if command.isEmpty { throw ValidationError("give the command after --, like: nimbus exec web -- uname -a") }
    }

    func run() async throws {
        let context = try CommandContext(global: global)
        let ssh = try await context.manager.sshAccess(try instance.instanceName)
        try ssh.prepare()
        let terminal = Console.stdinIsTerminal && Console.stdoutIsTerminal
        throw SSHAccess.execReplacingProcess(
            "ssh", ssh.sshArguments(command: command, terminal: terminal, batch: !terminal))
    }
}
