import Foundation
import NimbusCore

/// The scratch disk of `--ephemeral`: like a cloud's instance store, it comes back empty at every start.
///
/// It is a raw file made anew and formatted with `mkfs.ext4` before each start (mkfs writes into a file
/// without a loop device); cloud-init's `mounts` mounts it by its label, so the mount point survives
/// reboots while the data does not.
enum Ephemeral {
    /// The filesystem label cloud-init mounts by.
    static let label = "nimbus-scratch"

    /// Replaces `url` with an empty ext4 filesystem of `size`.
    static func format(_ url: URL, size: ByteSize) async throws(NimbusError) {
        let mkfs = try ProgramRunner.require("mkfs.ext4", package: "e2fsprogs")
        try? FileManager.default.removeItem(at: url)
        guard FileManager.default.createFile(atPath: url.path, contents: nil, attributes: [.posixPermissions: 0o600])
        else {
            throw NimbusError(.io, "could not create the scratch disk \(url.path)")
        }
        do {
            let handle = try FileHandle(forWritingTo: url)
            try handle.truncate(atOffset: size.bytes)
            try handle.close()
        } catch {
            throw NimbusError(.io, "could not size the scratch disk \(url.path) to \(size)", cause: error)
        }
        // lazy_itable_init and nodiscard keep formatting a large sparse file to a fraction of a second.
        try await ProgramRunner.run(
            mkfs, ["-q", "-F", "-L", label, "-E", "lazy_itable_init=1,lazy_journal_init=1,nodiscard", url.path])
    }
}
