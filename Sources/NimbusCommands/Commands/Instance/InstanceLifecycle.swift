import ArgumentParser
import NimbusInstances

/// `nimbus start NAME... | --all`.
struct InstanceStart: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "start", abstract: "Start stopped instances.")

    @OptionGroup var global: Flags.Global
    @OptionGroup var selection: Flags.Selection

    @Option(help: "Seconds to wait for each instance to be ready.")
    var timeout: Int = 600

    @Flag(help: "Return once QEMU has started.")
    var noWait = false

    func run() async throws {
        let context = try CommandContext(global: global)
        try await AggregateError.forEach(try selection.resolve(context)) { name in
            try await context.manager.start(name, wait: !noWait, timeout: .seconds(timeout))
        }
    }
}

/// `nimbus stop NAME... | --all`.
struct InstanceStop: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "stop", abstract: "Stop instances: ACPI power-off, forced after --timeout.")

    @OptionGroup var global: Flags.Global
    @OptionGroup var selection: Flags.Selection

    @Flag(help: "Stop at once, like pulling the plug.")
    var force = false

    @Option(help: "Seconds to wait for the guest to power off before forcing it (default from config.yaml, else 60).")
    var timeout: Int?

    func run() async throws {
        let context = try CommandContext(global: global)
        let seconds = timeout ?? context.config.stopTimeout
        try await AggregateError.forEach(try selection.resolve(context)) { name in
            try await context.manager.stop(name, force: force, timeout: .seconds(seconds))
        }
    }
}

/// `nimbus restart NAME... | --all`.
struct InstanceRestart: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "restart", abstract: "Stop, then start instances.")

    @OptionGroup var global: Flags.Global
    @OptionGroup var selection: Flags.Selection

    @Option(help: "Seconds to wait for each instance to be ready.")
    var timeout: Int = 600

    func run() async throws {
        let context = try CommandContext(global: global)
        try await AggregateError.forEach(try selection.resolve(context)) { name in
            try await context.manager.stop(name, force: false, timeout: .seconds(context.config.stopTimeout))
            try await context.manager.start(name, wait: true, timeout: .seconds(timeout))
        }
    }
}

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

/// `nimbus delete NAME... [--purge]`.
struct InstanceDelete: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "delete", abstract: "Stop and delete instances (recoverable until purged).")

    @OptionGroup var global: Flags.Global
    @OptionGroup var selection: Flags.Selection

    @Flag(help: "Remove the instances and their disks for good.")
    var purge = false

    func run() async throws {
        let context = try CommandContext(global: global)
        try await AggregateError.forEach(try selection.resolve(context)) {
            try await context.manager.delete($0, purge: purge)
        }
    }
}

/// `nimbus recover [--connect URI] [NAME...]`.
struct InstanceRecover: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "recover",
        abstract:
            "Bring back deleted instances, repair instances in the error state, or rebuild lost ones from libvirt.",
        discussion: """
            With NAMEs: each deleted or broken instance is brought back; one whose folder is missing is rebuilt \
            from its libvirt domain's metadata. Without NAMEs: every instance of this store whose folder is \
            missing while its libvirt domain remains (on --connect, else on every daemon the store knows) is \
            rebuilt. Domains without Nimbus's metadata are never touched.
            """)

    @OptionGroup var global: Flags.Global

    @Option(help: "The libvirt URI to look for domains on (default: every daemon this store knows).")
    var connect: String?

    @Argument(help: "Instance names.", completion: .custom(instanceNameCompletions))
    var names: [String] = []

    func validate() throws {
        try validating { for name in names { _ = try InstanceName(name) } }
    }

    func run() async throws {
        let context = try CommandContext(global: global)
        if names.isEmpty {
            for name in try await context.manager.recoverLost(connect: connect) { Console.result("\(name)\n") }
            return
        }
        try await AggregateError.forEach(try names.map { try InstanceName($0) }) {
            try await context.manager.recover($0, connect: connect)
        }
    }
}

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
