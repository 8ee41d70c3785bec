import Foundation
import NimbusCore
import NimbusDisks

/// The scratch disk of `--ephemeral`: like a cloud's instance store, it comes back empty at every start.
///
/// It is a raw file made anew and formatted with `mkfs.ext4` before each start (`DiskImage.makeExt4`);
/// cloud-init's `mounts` mounts it by its label, so the mount point survives
/// reboots while the data does not.
enum Ephemeral {
    /// The filesystem label cloud-init mounts by.
    static let label = "nimbus-scratch"

    /// Replaces `url` with an empty ext4 filesystem of `size`.
    static func format(_ url: URL, size: ByteSize) async throws(NimbusError) {
        try await DiskImage.makeExt4(at: url, size: size, label: label)
    }
}
