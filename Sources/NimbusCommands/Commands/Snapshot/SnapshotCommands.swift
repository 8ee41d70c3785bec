import ArgumentParser
import NimbusInstances

/// `nimbus snapshot create|list|restore|delete`.
struct SnapshotCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "snapshot", abstract: "Snapshots of stopped instances (qcow2 internal snapshots).",
        subcommands: [SnapshotCreate.self, SnapshotList.self, SnapshotRestore.self, SnapshotDelete.self])
}

struct SnapshotCreate: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "create", abstract: "Snapshot a stopped instance.")

    @OptionGroup var global: Flags.Global
    @OptionGroup var instance: Flags.Instance
    @Argument(help: "The snapshot's name (default: snapshot-<date>).")
    var snapshot: String?

    func run() async throws {
        let context = try CommandContext(global: global)
        let name = try await context.manager.createSnapshot(try instance.instanceName, named: snapshot)
        Console.result("\(name)\n")
    }
}

struct SnapshotList: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "list", abstract: "List an instance's snapshots.")

    @OptionGroup var global: Flags.Global
    @OptionGroup var output: Flags.Output
    @OptionGroup var instance: Flags.Instance

    func run() async throws {
        let context = try CommandContext(global: global)
        let snapshots = try await context.manager.snapshots(try instance.instanceName)
        Console.result(
            try OutputRenderer.render(
                snapshots, columns: ["name", "created", "vm-size"],
                rows: snapshots.map { [$0.name, $0.created, $0.vmStateSize] }, format: output.format))
    }
}

struct SnapshotRestore: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "restore", abstract: "Return a stopped instance's disk to a snapshot.")

    @OptionGroup var global: Flags.Global
    @OptionGroup var instance: Flags.Instance
    @Argument(help: "The snapshot's name.")
    var snapshot: String

    func run() async throws {
        let context = try CommandContext(global: global)
        try await context.manager.restoreSnapshot(try instance.instanceName, named: snapshot)
    }
}

struct SnapshotDelete: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "delete", abstract: "Delete a snapshot.")

    @OptionGroup var global: Flags.Global
    @OptionGroup var instance: Flags.Instance
    @Argument(help: "The snapshot's name.")
    var snapshot: String

    func run() async throws {
        let context = try CommandContext(global: global)
        try await context.manager.deleteSnapshot(try instance.instanceName, named: snapshot)
    }
}
