import ArgumentParser
import NimbusInstances

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

            With --reseed NAME: the instance's cloud-init seed is made again with a new instance-id and the \
            same personality and SSH host key, and the instance is started: cloud-init runs as on a first boot \
            and writes the host key again. This repairs a guest whose SSH server no longer starts because an \
            unclean stop (QEMU or the host killed) emptied its key files.
            """)

    @OptionGroup var global: Flags.Global

    @Option(help: "The libvirt URI to look for domains on (default: every daemon this store knows).")
    var connect: String?

    @Flag(help: "Make the named instances' seeds again (new instance-id, same host key) and start them.")
    var reseed = false

    @Option(help: "With --reseed: seconds to wait for each instance to be ready.")
    var timeout: Int = 900

    @Argument(help: "Instance names.", completion: .custom(instanceNameCompletions))
    var names: [String] = []

    func validate() throws {
        try validating { for name in names { _ = try InstanceName(name) } }
        if reseed, names.isEmpty { throw ValidationError("--reseed needs the names of the instances to reseed") }
        if reseed, connect != nil {
            throw ValidationError("--reseed works on this store's instances: --connect is for lost ones")
        }
    }

    func run() async throws {
        let context = try CommandContext(global: global)
        if reseed {
            try await AggregateError.forEach(try names.map { try InstanceName($0) }) {
                try await context.manager.reseed($0, timeout: .seconds(timeout))
            }
            return
        }
        if names.isEmpty {
            for name in try await context.manager.recoverLost(connect: connect) { Console.result("\(name)\n") }
            return
        }
        try await AggregateError.forEach(try names.map { try InstanceName($0) }) {
            try await context.manager.recover($0, connect: connect)
        }
    }
}
