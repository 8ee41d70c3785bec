import Foundation
import NimbusCore
import Yams

/// The on-disk store of instances: one folder each under `instances/`, one lock each under `locks/`.
///
/// New instances are built in a hidden temporary folder and renamed into place, so a launch killed at any
/// point leaves either nothing visible or a whole instance. Every change to an instance happens while its
/// lock is held (`withLock`), so two `nimbus` processes never interleave on one instance, and work on
/// different instances runs in parallel.
///
/// A struct, not an actor: all its state is on disk, guarded by `flock` across processes, which an actor's
/// in-process isolation could not add to.
public struct InstanceStore: Sendable {
    /// Where the instance folders (`paths.instances`) and their locks live.
    public let paths: NimbusPaths

    /// A store of the instances under `paths.instances`.
    public init(paths: NimbusPaths) {
        self.paths = paths
    }

    /// The folder of `name` (which may not exist).
    public func directory(_ name: InstanceName) -> InstanceDirectory {
        InstanceDirectory(url: paths.instances.appending(path: name.rawValue, directoryHint: .isDirectory))
    }

    var locks: URL { paths.data.appending(path: "locks", directoryHint: .isDirectory) }

    /// True when an instance of that name exists.
    public func exists(_ name: InstanceName) -> Bool {
        FileManager.default.fileExists(atPath: directory(name).spec.path)
    }

    /// Every instance, by name. Hidden folders (launches under way) are not instances yet.
    public func names() -> [InstanceName] {
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: paths.instances.path)) ?? []
        return entries.filter { !$0.hasPrefix(".") }.compactMap { try? InstanceName($0) }.sorted()
    }

    /// Every qcow2 disk in the instance folders, with its owner for people (`instance web (disk.qcow2)`): what
    /// cached images may back (`ImageStore.Options.disks`), the roots kept for `rollback` and those an upgrade
    /// is making included. Read from the folders at each call.
    public func disks() -> [(owner: String, file: URL)] {
        names().flatMap { name -> [(owner: String, file: URL)] in
            let root = directory(name).url
            return ["", "rollback/", "upgrade.new/", "upgrade.partial/", "rollback.restore/"].flatMap { sub in
                let folder = sub.isEmpty ? root : root.appending(path: sub, directoryHint: .isDirectory)
                let files = (try? FileManager.default.contentsOfDirectory(atPath: folder.path)) ?? []
                return files.sorted().filter { $0.hasSuffix(".qcow2") }.map {
                    (owner: "instance \(name) (\(sub)\($0))", file: folder.appending(path: $0))
                }
            }
        }
    }

    /// Fails with `.notFound`, naming the instance and how to see the others, when it does not exist.
    public func requireExisting(_ name: InstanceName) throws(NimbusError) -> InstanceDirectory {
        let dir = directory(name)
        guard exists(name) else {
            throw NimbusError(.notFound, "instance \"\(name)\" does not exist: `nimbus list` shows the instances")
        }
        return dir
    }

    /// Runs `body` holding the lock of `name`.
    public func withLock<T: Sendable>(
        _ name: InstanceName, timeout: Duration = .seconds(600), _ body: (FileLock) async throws -> T
    ) async throws -> T {
        try createFolder(locks)
        let lock = try await FileLock.acquire(
            locks.appending(path: "\(name.rawValue).lock"), timeout: timeout, what: "instance \"\(name)\"")
        defer { lock.unlock() }
        return try await body(lock)
    }

    /// Runs `body` holding the lock of `name` if no other process holds it now; nil, without waiting, if one
    /// does.
    public func withLockIfFree<T: Sendable>(
        _ name: InstanceName, _ body: (FileLock) async throws -> T
    ) async throws -> T? {
        try createFolder(locks)
        guard let lock = try FileLock.attempt(locks.appending(path: "\(name.rawValue).lock")) else { return nil }
        defer { lock.unlock() }
        return try await body(lock)
    }

    // MARK: Files

    /// Reads the instance's instance.yaml; fails with `.notFound` when the instance does not exist, with
    /// `.io` when the file is damaged.
    public func loadSpec(_ name: InstanceName) throws(NimbusError) -> InstanceSpec {
        let url = try requireExisting(name).spec
        do {
            return try YAMLDecoder().decode(InstanceSpec.self, from: String(contentsOf: url, encoding: .utf8))
        } catch {
            throw NimbusError(
                .io,
                "\(url.path) is damaged (\(NimbusConfig.describeDamage(error))): it is the instance's definition, which Nimbus does not guess: mend it by hand (`nimbus doctor` says whether a copy can restore it), or `nimbus delete --purge \(name)`; the other instances are not affected",
                cause: error)
        }
    }

    /// Reads the instance's state.json; fails with `.notFound` when the instance does not exist, with
    /// `.io` when the file is damaged.
    public func loadState(_ name: InstanceName) throws(NimbusError) -> InstanceState {
        let url = try requireExisting(name).state
        do {
            return try InstanceState.decode(Data(contentsOf: url))
        } catch {
            throw NimbusError(
                .io,
                "\(url.path) is damaged (\(NimbusConfig.describeDamage(error))): `nimbus doctor --fix` makes it again from the instance's folder",
                cause: error)
        }
    }

    /// Writes state.json atomically. Call it with the instance's lock held.
    public func saveState(_ state: InstanceState, in dir: InstanceDirectory) throws(NimbusError) {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        encoder.dateEncodingStrategy = .iso8601
        do {
            try AtomicFile.write(try encoder.encode(state), to: dir.state)
        } catch let error as NimbusError {
            throw error
        } catch {
            throw NimbusError(
                .internalError, "could not encode the state of \(dir.url.lastPathComponent)", cause: error)
        }
    }

    /// Updates state.json in place. Call it with the instance's lock held.
    public func updateState(
        _ name: InstanceName, _ change: (inout InstanceState) -> Void
    ) throws(NimbusError) {
        var state = try loadState(name)
        change(&state)
        try saveState(state, in: directory(name))
    }

    /// Writes `spec` as instance.yaml at `url`, atomically, readable by its owner only: it holds the user's
    /// user-data, which often carries passwords and tokens.
    static func writeSpec(_ spec: InstanceSpec, to url: URL) throws(NimbusError) {
        let data: Data
        do {
            data = Data(try YAMLEncoder().encode(spec).utf8)
        } catch {
            throw NimbusError(.internalError, "could not encode the spec of \(spec.name)", cause: error)
        }
        try AtomicFile.write(data, to: url, permissions: 0o600)
    }

    // MARK: Creating and removing

    /// Builds a new instance in a temporary folder and renames it into place.
    ///
    /// `build` fills the folder (overlay, seed, ...) and returns the initial state; the spec is written
    /// first. Fails with `.alreadyExists` before building anything when the name is taken. On any failure the
    /// temporary folder is removed. Call it with the instance's lock held.
    public func create(
        _ spec: InstanceSpec, build: (InstanceDirectory) async throws -> InstanceState
    ) async throws -> InstanceDirectory {
        let final = directory(spec.name)
        guard !exists(spec.name) else {
            throw NimbusError(
                .alreadyExists,
                "an instance named \"\(spec.name)\" exists already: choose another --name, or `nimbus delete \(spec.name)` first"
            )
        }
        try createFolder(paths.instances)
        let staging = InstanceDirectory(
            url: paths.instances.appending(
                path: ".creating-\(spec.name)-\(UUID().uuidString.prefix(8))", directoryHint: .isDirectory))
        try createFolder(staging.url)
        do {
            try Self.writeSpec(spec, to: staging.spec)
            var state = try await build(staging)
            state.complete = true
            try saveState(state, in: staging)
            // A leftover folder without a spec (a delete interrupted half way) must not block the name.
            if FileManager.default.fileExists(atPath: final.url.path) {
                try FileManager.default.removeItem(at: final.url)
            }
            try FileManager.default.moveItem(at: staging.url, to: final.url)
            AtomicFile.syncDirectory(paths.instances)
            return final
        } catch {
            try? FileManager.default.removeItem(at: staging.url)
            throw error
        }
    }

    /// Removes the instance's folder and its lock file. Call it with the instance's lock held.
    public func remove(_ name: InstanceName, lock: FileLock) throws(NimbusError) {
        let dir = directory(name)
        // Rename first so a crash half way through the removal leaves no half instance behind under the name.
        let doomed = paths.instances.appending(path: ".deleting-\(name)-\(UUID().uuidString.prefix(8))")
        do {
            try FileManager.default.moveItem(at: dir.url, to: doomed)
            try FileManager.default.removeItem(at: doomed)
        } catch {
            throw NimbusError(.io, "could not remove \(dir.url.path)", cause: error)
        }
        lock.removeFile()
    }

    /// Hidden folders left by launches or deletions that were killed half way, and that no process is
    /// working on now.
    public func abandonedFolders() -> [URL] {
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: paths.instances.path)) ?? []
        return entries.filter { $0.hasPrefix(".creating-") || $0.hasPrefix(".deleting-") }.compactMap { entry in
            let url = paths.instances.appending(path: entry)
            // The name is the part between the prefix and the random suffix.
            let name = entry.split(separator: "-").dropFirst().dropLast().joined(separator: "-")
            let lockURL = locks.appending(path: "\(name).lock")
            guard let lock = try? FileLock.attempt(lockURL) else { return nil }
            lock.unlock()
            return url
        }
    }

    func createFolder(_ url: URL) throws(NimbusError) {
        do {
            try FileManager.default.createDirectory(
                at: url, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        } catch {
            throw NimbusError(.io, "could not create \(url.path)", cause: error)
        }
    }
}
