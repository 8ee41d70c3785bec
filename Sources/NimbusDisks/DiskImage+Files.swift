import Foundation
import NimbusCore

extension DiskImage {
    /// Creates an empty qcow2 image of `size` bytes at `url` (a data volume's disk): sparse, nothing written
    /// but its header until the guest writes.
    @discardableResult
    public static func createEmpty(at url: URL, size: UInt64) async throws(NimbusError) -> DiskInfo {
        let qemuImg = try ProgramRunner.require("qemu-img", package: "qemu-utils")
        try await ProgramRunner.run(qemuImg, ["create", "-q", "-f", "qcow2", url.path, String(size)])
        return try inspect(url)
    }

    /// Replaces `url` with a raw file of `size` bytes holding an empty ext4 filesystem labelled `label` (the
    /// scratch disk). mkfs writes into a file without a loop device; lazy initialisation and no discard keep
    /// formatting a large sparse file to a fraction of a second.
    public static func makeExt4(at url: URL, size: ByteSize, label: String) async throws(NimbusError) {
        let mkfs = try ProgramRunner.require("mkfs.ext4", package: "e2fsprogs")
        try? FileManager.default.removeItem(at: url)
        guard FileManager.default.createFile(atPath: url.path, contents: nil, attributes: [.posixPermissions: 0o600])
        else {
            throw NimbusError(.io, "could not create the disk \(url.path)")
        }
        do {
            let handle = try FileHandle(forWritingTo: url)
            try handle.truncate(atOffset: size.bytes)
            try handle.close()
        } catch {
            throw NimbusError(.io, "could not size the disk \(url.path) to \(size)", cause: error)
        }
        try await ProgramRunner.run(
            mkfs, ["-q", "-F", "-L", label, "-E", "lazy_itable_init=1,lazy_journal_init=1,nodiscard", url.path])
    }
}
