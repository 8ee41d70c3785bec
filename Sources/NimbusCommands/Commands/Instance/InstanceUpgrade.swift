import ArgumentParser
import Foundation
import NimbusCore
import NimbusInstances

#if canImport(Glibc)
    import Glibc
#endif

/// `nimbus upgrade NAME... | --all [--image REF] [--yes] [--dry-run] [--prune]`.
struct InstanceUpgrade: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "upgrade", abstract: "Move instances to a fresh root disk from a newer image, keeping their data.",
        discussion: """
            The image is pulled and verified first (nothing stops if that fails). Then the instance stops, its \
            root disk and seed are kept as the rollback point, and a fresh root is made from the new image with \
            the same personality: hostname, users, SSH host key, volumes, forwards and network addresses; \
            cloud-init runs on it as on a first boot. If the new root does not become ready, the old one is \
            started again and the command fails saying why. Volumes (--volume) keep their data; anything \
            written to the old root stays on the rollback point only. `nimbus rollback NAME` returns to it.
            """)

    @OptionGroup var global: Flags.Global
    @OptionGroup var selection: Flags.Selection
    @OptionGroup var output: Flags.Output

    @Option(help: "The image to move to, like debian:13 (default: the newest build of the instance's own image).")
    var image: String?

    @Flag(help: "Do not ask for confirmation.")
    var yes = false

    @Flag(help: "List what would change, and change nothing.")
    var dryRun = false

    @Flag(help: "Delete the rollback point kept by the last upgrade instead.")
    var prune = false

    @Option(
        help:
            "Seconds to wait for the new root to be ready; the old root, started again when it is not, gets at least 900."
    )
    var timeout: Int = 900

    func validate() throws {
        if prune && (image != nil || dryRun) { throw ValidationError("--prune takes no --image or --dry-run") }
        if image != nil && selection.all { throw ValidationError("--image names one release: give instance names") }
        if image != nil && dryRun {
            throw ValidationError("--dry-run lists the newer builds of the instances' own images: it takes no --image")
        }
    }

    func run() async throws {
        let context = try CommandContext(global: global)
        let manager = context.manager
        let names = try selection.resolve(context)
        if prune {
            try await AggregateError.forEach(names) { try await manager.pruneRollback($0) }
            return
        }
        if dryRun || selection.all {
            let plans = try await manager.upgradePlans().filter { plan in names.contains { $0.rawValue == plan.name } }
            if dryRun {
                let rows = plans.map { [$0.name, $0.fromImage, $0.fromBuild ?? "-", $0.toBuild ?? "-"] }
                print(
                    try OutputRenderer.render(
                        plans, columns: ["name", "image", "now", "newest"], rows: rows, format: output.format),
                    terminator: "")
                return
            }
            try await AggregateError.forEach(plans.compactMap { try? InstanceName($0.name) }) { name in
                try await manager.upgrade(
                    name, to: nil, timeout: .seconds(timeout), confirm: UpgradeConfirmation.ask(unless: yes))
            }
            return
        }
        try await AggregateError.forEach(names) { name in
            try await manager.upgrade(
                name, to: image, timeout: .seconds(timeout), confirm: UpgradeConfirmation.ask(unless: yes))
        }
    }
}

/// The confirmation `upgrade` and `apply` ask before an instance is moved to a new root.
enum UpgradeConfirmation {
    /// Asks on a terminal; elsewhere only `yes` (--yes) confirms, and without it nothing changes.
    static func ask(unless yes: Bool) -> @Sendable (UpgradePlan) async throws -> Void {
        { plan in
            guard !yes else { return }
            let change =
                "\(plan.name) stops and moves from \(plan.fromBuild ?? plan.fromImage) to \(plan.toBuild ?? plan.toImage) on a fresh root disk (volumes keep their data; the old root is kept for `nimbus rollback \(plan.name)`)"
            guard isatty(STDIN_FILENO) == 1 else {
                throw NimbusError(.invalidArgument, "\(change): pass --yes to confirm (stdin is not a terminal)")
            }
            FileHandle.standardError.write(Data("\(change). Go ahead? [y/N] ".utf8))
            let answer = readLine()?.trimmingCharacters(in: .whitespaces).lowercased()
            guard answer == "y" || answer == "yes" else {
                throw NimbusError(.invalidState, "\(plan.name): upgrade not confirmed; nothing changed")
            }
        }
    }
}

/// `nimbus rollback NAME`.
struct InstanceRollback: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "rollback",
        abstract: "Return an instance to the root disk it had before its last upgrade, and start it.",
        discussion: "One level: the newer root is deleted, and there is no rollback point afterwards.")

    @OptionGroup var global: Flags.Global
    @OptionGroup var instance: Flags.Instance

    @Option(help: "Seconds to wait for the instance to be ready.")
    var timeout: Int = 900

    func run() async throws {
        let context = try CommandContext(global: global)
        try await context.manager.rollback(try instance.instanceName, timeout: .seconds(timeout))
    }
}
