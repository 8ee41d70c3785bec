import Foundation
import NimbusCore

extension DiskImage {
    /// An internal snapshot of a qcow2 image, as `qemu-img info --output=json` lists it.
    public struct Snapshot: Sendable, Equatable {
        /// The snapshot's name.
        public var name: String
        /// When it was taken.
        public var date: Date
        /// The size of the machine state saved with it; 0 for a disk-only snapshot.
        public var vmStateSize: UInt64
    }

    /// The internal snapshots of `disk`. `shared` reads the header without the write lock a running QEMU
    /// holds (`-U`).
    public static func snapshots(of disk: URL, shared: Bool = false) async throws(NimbusError) -> [Snapshot] {
        struct Info: Decodable {
            struct Entry: Decodable {
                let name: String
                let dateSec: Int
                let vmStateSize: UInt64

                enum CodingKeys: String, CodingKey {
                    case name
                    case dateSec = "date-sec"
                    case vmStateSize = "vm-state-size"
                }
            }
            let snapshots: [Entry]?
        }
        let qemuImg = try ProgramRunner.require("qemu-img", package: "qemu-utils")
        let output = try await ProgramRunner.run(
            qemuImg, ["info", "--output=json"] + (shared ? ["-U"] : []) + [disk.path])
        let info: Info
        do {
            info = try JSONDecoder().decode(Info.self, from: Data(output.utf8))
        } catch {
            throw NimbusError(
                .internalError, "qemu-img info printed JSON Nimbus cannot read for \(disk.path)", cause: error)
        }
        return (info.snapshots ?? []).map {
            Snapshot(
                name: $0.name, date: Date(timeIntervalSince1970: TimeInterval($0.dateSec)), vmStateSize: $0.vmStateSize)
        }
    }

    /// Takes an internal snapshot `name` of `disk`, which no machine may have open.
    public static func createSnapshot(_ name: String, of disk: URL) async throws(NimbusError) {
        try await snapshot("-c", name, disk)
    }

    /// Returns `disk` to its snapshot `name`.
    public static func applySnapshot(_ name: String, to disk: URL) async throws(NimbusError) {
        try await snapshot("-a", name, disk)
    }

    /// Deletes the snapshot `name` of `disk`.
    public static func deleteSnapshot(_ name: String, of disk: URL) async throws(NimbusError) {
        try await snapshot("-d", name, disk)
    }

    private static func snapshot(_ action: String, _ name: String, _ disk: URL) async throws(NimbusError) {
        let qemuImg = try ProgramRunner.require("qemu-img", package: "qemu-utils")
        let verb = [
            "-c": "take snapshot \(name) of", "-a": "apply snapshot \(name) to", "-d": "delete snapshot \(name) of",
        ]
        try await runQemuImg(
            qemuImg, ["snapshot", action, name, disk.path], writing: disk, action: verb[action] ?? action)
    }
}
