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
