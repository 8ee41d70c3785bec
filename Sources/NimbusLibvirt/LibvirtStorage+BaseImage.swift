import CLibvirt
import Crypto
import Foundation
import NimbusCore
import NimbusDisks
import NimbusMachines

extension LibvirtStorage {
    // MARK: the base image

    /// The base volume for `image` on this host: found by the SHA-256 in its name, or uploaded and verified.
    func baseVolume(_ image: URL, format: MachineConfig.DiskFormat, in pool: LibvirtPool) async throws(NimbusError)
        -> LibvirtVolume
    {
        let digest = try await Self.sha256(of: image)
        let name = Self.baseVolumeName(sha256: digest, format: format)
        if let complete = try await completeBase(name, in: pool) { return complete }
        pool.deleteStaleUploads(of: name)

        let size = try Self.fileSize(image)
        // The temporary volume and its copy under the final name exist together for a moment.
        let needed = size * 2
        let available = pool.available()
        if let available, available < needed {
            throw NimbusError(
                .unsupported,
                "storage pool \(poolName) at \(uri) has \(ByteSize(bytes: available).humanReadable) free, but uploading base image \(image.lastPathComponent) (\(ByteSize(bytes: size).humanReadable)) needs \(ByteSize(bytes: needed).humanReadable) while it is verified and moved into place: free space in the pool's directory (\((try? pool.targetPath()) ?? "?")), or choose another pool"
            )
        }
        let temporary = "\(name).part-\(UUID().uuidString.prefix(8).lowercased())"
        progress(
            "uploading base image \(image.lastPathComponent) (\(ByteSize(bytes: size).humanReadable)) to pool \(poolName) at \(uri)"
        )
        // Declared in the image's own format: the copy below converts from the format libvirt has on record,
        // and libvirt re-probes every volume of the pool in a thread of its own after an upload ends (unless
        // another copy is running in the pool), so a volume declared raw holding qcow2 is raw or qcow2
        // depending on that thread, and a raw one is copied into a qcow2 whose disk is the qcow2 file's bytes.
        let part = try pool.createVolume(temporary, size: size, format: format, mode: 0o644, owner: owner)
        do throws(NimbusError) {
            let sent = try await Self.offload { () throws(NimbusError) -> String in
                try part.upload(image, sparse: false, hashing: true) ?? ""
            }
            guard sent == digest else {
                throw NimbusError(
                    .integrity,
                    "base image \(image.path) changed while it was uploaded (SHA-256 \(digest) before, \(sent) sent): run the command again"
                )
            }
            let arrived = try await Self.offload { () throws(NimbusError) -> String in
                try part.downloadDigest(size: size)
            }
            guard arrived == digest else {
                throw NimbusError(
                    .integrity,
                    "the base image uploaded to pool \(poolName) at \(uri) does not match (SHA-256 \(digest) sent, \(arrived) arrived): the upload was removed; run the command again"
                )
            }
            let virtualSize = try DiskImage.inspect(image).virtualSize
            let final = try await Self.offload { () throws(NimbusError) -> LibvirtVolume in
                try pool.clone(part, as: name, capacity: virtualSize, format: format, mode: 0o644, owner: owner)
            }
            // The marker says the copy finished: a daemon that dies while copying leaves a file without one.
            _ = try pool.createVolume(Self.markerName(name), size: 0, format: .raw, mode: 0o644, owner: owner)
            try? part.delete()
            progress("base image verified on arrival (SHA-256 \(digest.prefix(16))...) as \(name)")
            return final
        } catch {
            try? part.delete()
            // Another Nimbus process may have put the same image in place meanwhile.
            if let complete = try? await completeBase(name, in: pool) { return complete }
            if error.message.contains("No space left") || error.message.contains("ENOSPC") {
                throw NimbusError(
                    .unsupported,
                    "storage pool \(poolName) at \(uri) ran out of space while base image \(image.lastPathComponent) (\(ByteSize(bytes: size).humanReadable), \(ByteSize(bytes: needed).humanReadable) needed) was uploaded: the partial volume was removed; free space in the pool or choose another pool",
                    cause: error)
            }
            throw error
        }
    }

    /// The base volume `name` when its copy finished (its marker exists); nil when there is none.
    ///
    /// A volume without marker is a copy that never finished (a daemon that died mid-copy), one another Nimbus
    /// is making right now, or one whose marker is a moment away. So it is watched first: libvirt refuses to
    /// delete a volume it is still building, which tells a copy in progress (waited for) from a leftover,
    /// and a leftover is deleted only after `markerGrace` without a marker.
    func completeBase(_ name: String, in pool: LibvirtPool) async throws(NimbusError) -> LibvirtVolume? {
        let deadline = ContinuousClock.now + .seconds(1800)
        var unmarkedSince = ContinuousClock.now
        var told = false
        while true {
            guard let volume = try pool.volume(named: name) else { return nil }
            if try pool.volume(named: Self.markerName(name)) != nil { return volume }
            if ContinuousClock.now - unmarkedSince >= Self.markerGrace {
                if libvirt.virStorageVolDelete(volume.pointer, 0) == 0 {
                    progress("deleted \(name) from pool \(poolName): a copy that never finished")
                    return nil
                }
                libvirt.virResetLastError()
                // Still being built by another Nimbus: wait for it, then give its marker the grace again.
                if !told { progress("waiting for another Nimbus copying \(name) into pool \(poolName)") }
                told = true
                unmarkedSince = ContinuousClock.now
            }
            guard ContinuousClock.now < deadline else {
                throw NimbusError(
                    .timeout,
                    "base image volume \(name) in pool \(poolName) at \(uri) has been copied by another Nimbus for 30 minutes: run the command again later, or delete that volume if nothing copies it"
                )
            }
            try? await Task.sleep(for: .seconds(1))
        }
    }

    /// How long a base volume may lack its marker before it is taken for a leftover.
    static let markerGrace: Duration = .seconds(10)

    /// The empty volume whose existence says base volume `name` is complete.
    static func markerName(_ name: String) -> String { "\(name).complete" }

    /// `nimbus-base-<first 16 hex digits of the SHA-256>.<format>`.
    static func baseVolumeName(sha256: String, format: MachineConfig.DiskFormat) -> String {
        "nimbus-base-\(sha256.prefix(16)).\(format.rawValue)"
    }

    /// Deletes volume `name` if it exists and uploads `file` under that name; returns the volume's path.
    func replaceVolume(_ name: String, with file: URL, format: MachineConfig.DiskFormat, in pool: LibvirtPool)
        async throws(NimbusError) -> String
    {
        try pool.volume(named: name)?.delete()
        let size = try Self.fileSize(file)
        if let available = pool.available(), available < size {
            throw NimbusError(
                .unsupported,
                "storage pool \(poolName) at \(uri) has \(ByteSize(bytes: available).humanReadable) free, but \(file.lastPathComponent) needs \(ByteSize(bytes: size).humanReadable): free space in the pool's directory, or choose another pool"
            )
        }
        let volume = try pool.createVolume(name, size: size, format: format, mode: 0o600, owner: owner)
        do throws(NimbusError) {
            _ = try await Self.offload { () throws(NimbusError) -> String? in
                try volume.upload(file, sparse: true, hashing: false)
            }
        } catch {
            try? volume.delete()
            throw error
        }
        return try volume.path()
    }
}
