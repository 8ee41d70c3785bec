import ArgumentParser
import Foundation
import NimbusCore
import NimbusDrivers
import NimbusImages
import NimbusInstances

/// What every command needs to reach the store: the paths, the configuration, and a manager to act with.
struct CommandContext {
    let paths: NimbusPaths
    let config: NimbusConfig
    let manager: InstanceManager

    /// A context with config.yaml's settings, or with `config` when given (`doctor` goes on with the defaults
    /// past a damaged config.yaml).
    init(global: Flags.Global, config: NimbusConfig? = nil) throws {
        global.bootstrapLogging()
        paths = NimbusPaths.resolve()
        self.config = try config ?? NimbusConfig.load(paths: paths)
        let quiet = global.quiet
        var manager = InstanceManager(paths: paths, config: self.config) { message in
            if !quiet { Console.status(message) }
        }
        let display = ProgressDisplay(enabled: !quiet, terminal: isatty(STDERR_FILENO) == 1)
        manager.imageProgress = { display.update($0) }
        self.manager = manager
    }
}

/// Writes to the terminal: results to stdout, everything else to stderr.
enum Console {
    static func status(_ message: String) {
        FileHandle.standardError.write(Data((message + "\n").utf8))
    }

    static func result(_ text: String) {
        FileHandle.standardOutput.write(Data(text.utf8))
    }

    static var stdinIsTerminal: Bool { isatty(0) == 1 }
    static var stdoutIsTerminal: Bool { isatty(1) == 1 }
}

/// Several failures of a command that acts on several instances, one a line; the exit status is the first's.
struct AggregateError: Error, CustomStringConvertible {
    let failures: [(InstanceName, NimbusError)]

    var description: String {
        failures.map { "\($0.0): \($0.1.description)" }.joined(separator: "\n")
    }

    /// Runs `body` on every name, then throws every failure at once.
    static func forEach(_ names: [InstanceName], _ body: (InstanceName) async throws -> Void) async throws {
        var failures: [(InstanceName, NimbusError)] = []
        for name in names {
            do {
                try await body(name)
            } catch let error as NimbusError {
                failures.append((name, error))
            } catch {
                failures.append((name, NimbusError(.internalError, "\(error)")))
            }
        }
        if failures.count == 1 { throw failures[0].1 }
        if !failures.isEmpty { throw AggregateError(failures: failures) }
    }
}

extension Flags {
    /// `NAME... | --all`, for commands that act on several instances.
    struct Selection: ParsableArguments {
        @Argument(help: "Instance names.", completion: .custom(instanceNameCompletions))
        var names: [String] = []

        @Flag(help: "Act on every instance.")
        var all = false

        func validate() throws {
            if all && !names.isEmpty { throw ValidationError("give instance names or --all, not both") }
            if !all && names.isEmpty { throw ValidationError("name at least one instance, or pass --all") }
            try validating { for name in names { _ = try InstanceName(name) } }
        }

        func resolve(_ context: CommandContext) throws -> [InstanceName] {
            all ? InstanceStore(paths: context.paths).names() : try names.map { try InstanceName($0) }
        }
    }

    /// One instance name.
    struct Instance: ParsableArguments {
        @Argument(help: "The instance name.", completion: .custom(instanceNameCompletions))
        var name: String

        func validate() throws { try validating { _ = try InstanceName(name) } }

        var instanceName: InstanceName {
            get throws { try InstanceName(name) }
        }
    }

    /// `--cpus`, `--memory`, `--disk`.
    struct Resources: ParsableArguments {
        @Option(help: "Virtual CPUs (default from config.yaml, else 2).")
        var cpus: Int?

        @Option(help: "Memory, like 512M or 2G (default from config.yaml, else 2G).")
        var memory: String?

        @Option(help: "Disk size, like 10G; at least the image's size (default from config.yaml, else 10G).")
        var disk: String?

        func validate() throws {
            if let cpus, cpus < 1 || cpus > 255 {
                throw ValidationError("--cpus \(cpus) is out of range: use 1 to 255")
            }
            try validating {
                if let memory { _ = try ByteSize(parsing: memory, what: "--memory") }
                if let disk { _ = try ByteSize(parsing: disk, what: "--disk") }
            }
        }
    }
}

/// Instance names for shell completion.
@Sendable func instanceNameCompletions(_ arguments: [String], _ index: Int, _ prefix: String) -> [String] {
    InstanceStore(paths: NimbusPaths.resolve()).names().map(\.rawValue).filter { $0.hasPrefix(prefix) }
}

/// Runs checks that throw `NimbusError` inside a `validate()`, as `ValidationError`s, so argument mistakes
/// all exit with the usage status and show the usage hint.
func validating(_ body: () throws -> Void) throws {
    do {
        try body()
    } catch let error as NimbusError {
        throw ValidationError(error.message)
    }
}
