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
