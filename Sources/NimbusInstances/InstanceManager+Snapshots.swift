import Foundation
import NimbusCore
import NimbusDisks

/// One internal snapshot of an instance's disk.
public struct SnapshotInfo: Codable, Sendable, Equatable {
    /// The snapshot's name (`snapshot-20240102-150405`, in UTC, when none was given).
    public var name: String
    /// When it was taken, in ISO 8601 and UTC (`2024-01-02T15:04:05Z`).
    public var created: String
    /// The size of the saved VM state, for people (`0 B` for disk-only snapshots).
    public var vmStateSize: String
}

extension InstanceManager {
    /// Takes a qcow2 internal snapshot of a stopped instance's disk; returns its name.
    public func createSnapshot(_ name: InstanceName, named snapshot: String?) async throws -> String {
        let label = snapshot ?? "snapshot-" + Self.snapshotStamp()
        try Self.checkSnapshotName(label)
        return try await withStoppedDisk(name, doing: "snapshot") { disk in
            if try await listSnapshots(disk).contains(where: { $0.name == label }) {
                throw NimbusError(
                    .alreadyExists, "\(name) has a snapshot named \"\(label)\" already: choose another name")
            }
            try await DiskImage.createSnapshot(label, of: disk)
            return label
        }
    }

    /// The snapshots of an instance's disk (readable while it runs).
    public func snapshots(_ name: InstanceName) async throws -> [SnapshotInfo] {
        let dir = try store.requireExisting(name)
        return try await listSnapshots(
            hypervisor.driver(dir.machine).storage?.diskFile(dir.machine) ?? dir.disk, shared: true)
    }

    /// Returns a stopped instance's disk to a snapshot.
    public func restoreSnapshot(_ name: InstanceName, named snapshot: String) async throws {
        try await withStoppedDisk(name, doing: "restore a snapshot of") { disk in
            try await requireSnapshot(snapshot, of: name, disk: disk)
            try await DiskImage.applySnapshot(snapshot, to: disk)
        }
    }

    /// Deletes a snapshot of a stopped instance.
    public func deleteSnapshot(_ name: InstanceName, named snapshot: String) async throws {
        try await withStoppedDisk(name, doing: "delete a snapshot of") { disk in
            try await requireSnapshot(snapshot, of: name, disk: disk)
            try await DiskImage.deleteSnapshot(snapshot, of: disk)
        }
    }

    func requireSnapshot(_ snapshot: String, of name: InstanceName, disk: URL) async throws {
        let known = try await listSnapshots(disk)
        guard known.contains(where: { $0.name == snapshot }) else {
            let names = known.map(\.name)
            throw NimbusError(
                .notFound,
                "\(name) has no snapshot \"\(snapshot)\""
                    + (names.isEmpty ? "" : ": it has \(names.joined(separator: ", "))"))
        }
    }

    /// Runs `body` on the disk of a stopped instance, under its lock; says clearly when it must be stopped.
    func withStoppedDisk<T: Sendable>(
        _ name: InstanceName, doing action: String, _ body: (URL) async throws -> T
    ) async throws -> T {
        try await store.withLock(name) { _ in
            let dir = try store.requireExisting(name)
            let driver = hypervisor.driver(dir.machine)
            guard await driver.status(of: dir.machine).state == .stopped else {
                throw NimbusError(
                    .invalidState, "\(name) is running: stop it first (`nimbus stop \(name)`) to \(action) it")
            }
            return try await body(driver.storage?.diskFile(dir.machine) ?? dir.disk)
        }
    }

    /// The snapshots of `disk`, for people.
    func listSnapshots(_ disk: URL, shared: Bool = false) async throws -> [SnapshotInfo] {
        let formatter = ISO8601DateFormatter()
        return try await DiskImage.snapshots(of: disk, shared: shared).map {
            SnapshotInfo(
                name: $0.name, created: formatter.string(from: $0.date),
                vmStateSize: ByteSize(bytes: $0.vmStateSize).humanReadable)
        }
    }

    static func checkSnapshotName(_ name: String) throws(NimbusError) {
        let allowed = name.unicodeScalars.allSatisfy {
            CharacterSet.alphanumerics.contains($0) || $0 == "-" || $0 == "_" || $0 == "."
        }
        guard !name.isEmpty, name.count <= 64, allowed, name.first != "-" else {
            throw NimbusError(
                .invalidArgument,
                "snapshot name \"\(name)\" is not valid: use letters, digits, '-', '_' and '.', at most 64")
        }
    }

    static func snapshotStamp() -> String {
        let formatter = DateFormatter()
        formatter.locale = Locale(identifier: "en_US_POSIX")
        formatter.timeZone = TimeZone(identifier: "UTC")
        formatter.dateFormat = "yyyyMMdd-HHmmss"
        return formatter.string(from: Date())
    }
}
