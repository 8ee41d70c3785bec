import ArgumentParser
import Foundation
import NimbusCore
import NimbusInstances

/// `nimbus apply -f fleet.yaml [--prune]`.
struct FleetApply: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "apply", abstract: "Launch the instances a fleet file declares, in parallel.",
        discussion:
            "Idempotent: instances that exist are left as they are. --prune deletes the file's instances it no longer lists."
    )

    @OptionGroup var global: Flags.Global

    @Option(name: .shortAndLong, help: "The fleet file.")
    var file: String

    @Flag(help: "Delete (and purge) instances launched from this file that it no longer lists.")
    var prune = false

    @Flag(help: "Upgrade instances whose image the file changed without asking.")
    var yes = false

    @Option(help: "Seconds to wait for each instance to be ready.")
    var timeout: Int = 900

    func run() async throws {
        let context = try CommandContext(global: global)
        let fleet = try FleetFile(url: URL(fileURLWithPath: file), config: context.config)
        let report = await context.manager.apply(
            fleet, prune: prune, timeout: .seconds(timeout), confirm: UpgradeConfirmation.ask(unless: yes))
        for name in report.networksCreated { Console.result("created network \(name)\n") }
        for name in report.launched { Console.result("launched \(name)\n") }
        for name in report.upgraded { Console.result("upgraded \(name)\n") }
        for name in report.unchanged { Console.result("unchanged \(name)\n") }
        for name in report.pruned { Console.result("pruned \(name)\n") }
        for name in report.networksPruned { Console.result("pruned network \(name)\n") }
        try await AggregateError.forEach(report.failures.map(\.0)) { name in
            if let error = report.failures.first(where: { $0.0 == name })?.1 { throw error }
        }
        if let (name, error) = report.networkFailures.first {
            throw NimbusError(error.code, "network \(name) could not be pruned: \(error.message)")
        }
    }
}
