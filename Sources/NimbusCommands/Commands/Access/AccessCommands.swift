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

/// `nimbus copy SRC... DST`, with `NAME:path` on one side.
struct AccessCopy: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "copy", abstract: "Copy files between the host and an instance (NAME:path on one side).")

    @OptionGroup var global: Flags.Global

    @Argument(help: "Sources, then the destination; guest paths are written NAME:path.")
    var paths: [String] = []

    @Flag(name: .shortAndLong, help: "Copy folders recursively.")
    var recursive = false

    /// Splits `NAME:path` (a host path with a colon must be written ./a:b).
    static func guestPath(_ text: String) -> (String, String)? {
        guard !text.hasPrefix("/"), !text.hasPrefix("."), let colon = text.firstIndex(of: ":") else { return nil }
        return (String(text[..<colon]), String(text[text.index(after: colon)...]))
    }

    func validate() throws {
        try validating {
            guard paths.count >= 2 else { throw ValidationError("give at least one source and a destination") }
            let names = Set(paths.compactMap { Self.guestPath($0)?.0 })
            guard names.count == 1 else {
                throw ValidationError(
                    "name exactly one instance, as NAME:path, on one side, like: nimbus copy ./a web:/tmp/")
            }
            let destinationIsGuest = Self.guestPath(paths[paths.count - 1]) != nil
            guard paths.dropLast().allSatisfy({ (Self.guestPath($0) != nil) != destinationIsGuest }) else {
                throw ValidationError("copy either from the host to an instance or from an instance to the host")
            }
            for name in names { _ = try InstanceName(name) }
        }
    }

    func run() async throws {
        let context = try CommandContext(global: global)
        let name = try InstanceName(paths.compactMap { Self.guestPath($0)?.0 }.first ?? "")
        let ssh = try await context.manager.sshAccess(name)
        try ssh.prepare()
        let local = { (text: String) in Self.guestPath(text).map { ":" + $0.1 } ?? text }
        let arguments = ssh.scpArguments(
            sources: paths.dropLast().map(local), destination: local(paths[paths.count - 1]), recursive: recursive)
        throw SSHAccess.execReplacingProcess("scp", arguments)
    }
}

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

/// `nimbus logs NAME [--follow]`: the serial console log.
struct AccessLogs: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "logs", abstract: "Print an instance's serial console log.")

    @OptionGroup var global: Flags.Global
    @OptionGroup var instance: Flags.Instance

    @Flag(name: .shortAndLong, help: "Keep printing what the guest writes, until interrupted.")
    var follow = false

    func run() async throws {
        let context = try CommandContext(global: global)
        let log = try InstanceStore(paths: context.paths).requireExisting(try instance.instanceName).serialLog
        guard let handle = try? FileHandle(forReadingFrom: log) else {
            throw NimbusError(.notFound, "\(instance.name) has no serial log yet: it has not been started")
        }
        defer { try? handle.close() }
        while true {
            let data = handle.readDataToEndOfFile()
            if !data.isEmpty { FileHandle.standardOutput.write(data) }
            guard follow else { return }
            try await Task.sleep(for: .milliseconds(250))
        }
    }
}

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
