import Foundation
import NimbusCore
import NimbusDisks
import Yams

#if canImport(Glibc)
    import Glibc
#endif

/// The volumes on disk: one folder each under `NimbusPaths.volumes`, holding `volume.yaml` and the disk,
/// `disk.qcow2`. One lock guards them all: attaching checks and records the holder under it, so two
/// launches never both take one volume.
struct VolumeStore: Sendable {
    /// The folder of all volumes.
    let root: URL

    init(paths: NimbusPaths) { root = paths.volumes }

    func folder(_ name: String) -> URL { root.appending(path: name, directoryHint: .isDirectory) }
    func specFile(_ name: String) -> URL { folder(name).appending(path: "volume.yaml") }
    /// The volume's disk image.
    func disk(_ name: String) -> URL { folder(name).appending(path: "disk.qcow2") }

    /// True when a volume of that name exists (its `volume.yaml` is there).
    func exists(_ name: String) -> Bool { FileManager.default.fileExists(atPath: specFile(name).path) }

    /// Every volume's name, sorted; folders being made (hidden) are not volumes yet.
    func names() -> [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: root.path)) ?? [])
            .filter { !$0.hasPrefix(".") && exists($0) }.sorted()
    }

    /// Reads `volume.yaml`; `.notFound` when the volume does not exist, `.io` when the file is damaged.
    func load(_ name: String) throws(NimbusError) -> VolumeSpec {
        guard exists(name) else {
            throw NimbusError(
                .notFound,
                "volume \"\(name)\" does not exist: `nimbus volume list` shows the volumes, `nimbus volume create \(name) --size 10G` makes it"
            )
        }
        do {
            return try YAMLDecoder().decode(VolumeSpec.self, from: String(contentsOf: specFile(name), encoding: .utf8))
        } catch {
            throw NimbusError(
                .io, "\(specFile(name).path) is damaged: fix it, or move the volume's folder away", cause: error)
        }
    }

    /// Writes `volume.yaml` atomically.
    func save(_ spec: VolumeSpec) throws(NimbusError) {
        try AtomicFile.write(Data(try Self.encode(spec).utf8), to: specFile(spec.name))
    }

    /// Runs `body` holding the lock of all volumes.
    func withLock<T: Sendable>(_ body: () async throws -> T) async throws -> T {
        try makeRoot()
        return try await FileLock.withLock(root.appending(path: ".lock"), what: "the volumes", body)
    }

    /// Makes a new volume's folder and empty disk in a hidden place and renames it into place, so a volume
    /// is whole or absent.
    func create(_ spec: VolumeSpec) async throws(NimbusError) {
        try makeRoot()
        let staging = root.appending(path: ".\(spec.name).\(getpid()).new", directoryHint: .isDirectory)
        try? FileManager.default.removeItem(at: staging)
        do throws(NimbusError) {
            do {
                try FileManager.default.createDirectory(
                    at: staging, withIntermediateDirectories: false, attributes: [.posixPermissions: 0o700])
            } catch {
                throw NimbusError(.io, "cannot create \(staging.path): \(error.localizedDescription)", cause: error)
            }
            try await DiskImage.createEmpty(at: staging.appending(path: "disk.qcow2"), size: spec.size.bytes)
            try AtomicFile.write(Data(try Self.encode(spec).utf8), to: staging.appending(path: "volume.yaml"))
            guard rename(staging.path, folder(spec.name).path) == 0 else {
                throw posixFailure("move into place", folder(spec.name))
            }
        } catch {
            try? FileManager.default.removeItem(at: staging)
            throw error
        }
    }

    /// Removes the volume's folder, disk and all.
    func remove(_ name: String) throws(NimbusError) {
        do { try FileManager.default.removeItem(at: folder(name)) } catch {
            throw NimbusError(.io, "cannot remove \(folder(name).path): \(error.localizedDescription)", cause: error)
        }
    }

    /// The disk's allocation on the host, in bytes.
    func used(_ name: String) -> UInt64? {
        var status = stat()
        guard stat(disk(name).path, &status) == 0 else { return nil }
        return UInt64(status.st_blocks) * 512
    }

    private func makeRoot() throws(NimbusError) {
        do {
            try FileManager.default.createDirectory(
                at: root, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        } catch {
            throw NimbusError(.io, "cannot create \(root.path): \(error.localizedDescription)", cause: error)
        }
    }

    private static func encode(_ spec: VolumeSpec) throws(NimbusError) -> String {
        do { return try YAMLEncoder().encode(spec) } catch {
            throw NimbusError(.internalError, "could not encode volume \(spec.name): \(error)")
        }
    }
}
