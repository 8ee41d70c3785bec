import ArgumentParser
import NimbusInstances

/// `nimbus snapshot create|list|restore|delete`.
struct SnapshotCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "snapshot", abstract: "Snapshots of stopped instances (qcow2 internal snapshots).",
        subcommands: [SnapshotCreate.self, SnapshotList.self, SnapshotRestore.self, SnapshotDelete.self])
}
