import Foundation
import NimbusCore

/// What a root disk was made from, kept as `root.json` beside it and carried with it when roots are swapped.
struct RootRecord: Codable, Sendable, Equatable {
    /// This root's own id, which tells an interrupted swap (its rollback point names it) from a stale one.
    var id: String = UUID().uuidString
    /// The image reference the root was made from (instance.yaml's `image` while it is the root).
    var image: String
    /// The content address of the cached image the disk is backed by.
    var imageDigest: String?
    /// The image as people name it (`debian 12 (20260110-0001)`).
    var imageDescription: String?
    /// The seed's cloud-init instance-id.
    var seedInstanceID: String?
    /// 0 for the root made at launch, one more for each upgrade.
    var generation: Int
    /// When the root was made.
    var madeAt: Date

    /// The key of this root's disk in a driver's own storage (`MachineConfig.Disk.volumeKey`): nil for the
    /// launch's root, which was made before roots had keys.
    var volumeKey: String? { generation == 0 ? nil : String(id.prefix(8)).lowercased() }
}

/// An instance's root: its disk, seed and spec, swapped as one set, to a new root (`upgrade`) and back
/// (`rollback`), so that a process killed at any point leaves the instance on one whole root, never neither:
/// `finishInterrupted` completes a swap that had begun and abandons one that had not.
///
/// The set is `disk.qcow2`, `seed.iso` or `seed/`, `instance.yaml` and `root.json`. The folders beside it:
/// - `upgrade.partial/`: a new set being made; removed when found.
/// - `upgrade.new/`: a complete new set, which `commit` moves in (`root.json` last).
/// - `rollback.partial/`, renamed `rollback/` when complete: the set a commit replaces, hard-linked before
///   anything moves (so nothing is copied), with `next` naming the root that replaced it.
/// - `rollback.restore/`: the rollback point on its way back in.
/// - `rollback.drop/`: a rollback point being deleted.
///
/// Call every method with the instance's lock held.
struct RootSwap: Sendable {
    let dir: InstanceDirectory
    /// Called before each step that changes the file system, with a name for it (`rename disk.qcow2`): tests
    /// throw from it to stop a swap at that step, as a kill would.
    var checkpoint: @Sendable (String) throws(NimbusError) -> Void = { _ in }

    /// The members of a set, `root.json` last: it names the set, so it moves only when the rest has.
    static let members = ["disk.qcow2", "seed.iso", "seed", "instance.yaml", "root.json"]

    var partial: InstanceDirectory { folder("upgrade.partial") }
    var staged: InstanceDirectory { folder("upgrade.new") }
    var rollback: InstanceDirectory { folder("rollback") }
    private var rollbackPartial: InstanceDirectory { folder("rollback.partial") }
    private var restoring: InstanceDirectory { folder("rollback.restore") }
    private var dropping: InstanceDirectory { folder("rollback.drop") }

    private func folder(_ name: String) -> InstanceDirectory {
        InstanceDirectory(url: dir.url.appending(path: name, directoryHint: .isDirectory))
    }

    private static func exists(_ url: URL) -> Bool { FileManager.default.fileExists(atPath: url.path) }

    /// Whether a swap is under way here, or was left half done by a process killed in it: one of the folders
    /// a swap passes through is there.
    var isUnfinished: Bool {
        [partial, staged, rollbackPartial, restoring, dropping].contains { Self.exists($0.url) }
    }

    /// Whether a rollback point is kept.
    var hasRollback: Bool { Self.exists(rollback.url) }

    /// The record of the rollback point, if there is one.
    func rollbackRecord() -> RootRecord? { Self.record(at: rollback.rootRecord) }

    static func record(at url: URL) -> RootRecord? {
        guard let data = try? Data(contentsOf: url) else { return nil }
        let decoder = JSONDecoder()
        decoder.dateDecodingStrategy = .iso8601
        return try? decoder.decode(RootRecord.self, from: data)
    }

    static func write(_ record: RootRecord, to url: URL) throws(NimbusError) {
        let encoder = JSONEncoder()
        encoder.dateEncodingStrategy = .iso8601
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        let data: Data
        do {
            data = try encoder.encode(record)
        } catch {
            throw NimbusError(.internalError, "could not encode \(url.lastPathComponent)", cause: error)
        }
        try AtomicFile.write(data, to: url)
    }

    /// An empty `upgrade.partial/`, for a new set to be made in; any earlier one is removed first.
    func beginStaging() throws(NimbusError) -> InstanceDirectory {
        try remove(partial.url)
        try remove(staged.url)
        do {
            try FileManager.default.createDirectory(
                at: partial.url, withIntermediateDirectories: false, attributes: [.posixPermissions: 0o700])
        } catch {
            throw NimbusError(.io, "could not create \(partial.url.path)", cause: error)
        }
        return partial
    }

    /// Marks the new set complete: `upgrade.partial/` becomes `upgrade.new/`.
    func finishStaging() throws(NimbusError) {
        try rename(partial.url, staged.url)
    }

    /// Moves the staged set in, keeping the one it replaces as the rollback point (an earlier point is dropped:
    /// one level). `current` describes the root being replaced when it has no `root.json` (never upgraded).
    func commit(current: RootRecord) throws(NimbusError) {
        guard let next = Self.record(at: staged.rootRecord) else {
            throw NimbusError(.internalError, "\(staged.url.path) holds no root.json: the new root is incomplete")
        }
        try drop()
        try remove(rollbackPartial.url)
        try makeFolder(rollbackPartial.url)
        for member in Self.members where member != "root.json" {
            try link(dir.url.appending(path: member), into: rollbackPartial.url)
        }
        try checkpoint("write the rollback point's records")
        try Self.write(Self.record(at: dir.rootRecord) ?? current, to: rollbackPartial.rootRecord)
        try AtomicFile.write(Data(next.id.utf8), to: rollbackPartial.url.appending(path: "next"))
        try rename(rollbackPartial.url, rollback.url)
        try moveIn(from: staged.url)
    }

    /// Moves the rollback point back in, replacing the current root (which is deleted); afterwards there is no
    /// rollback point.
    func restore() throws(NimbusError) {
        try rename(rollback.url, restoring.url)
        try moveIn(from: restoring.url)
    }

    /// Deletes the rollback point.
    func drop() throws(NimbusError) {
        if Self.exists(rollback.url) { try rename(rollback.url, dropping.url) }
        try remove(dropping.url)
    }

    /// Completes or abandons what a killed swap left: a rollback half moved in is finished; a commit whose
    /// rollback point was made (it names the staged root) is finished; a staged root never committed, a set
    /// half made and a rollback point half deleted are removed. Returns what it did, for people; nil when
    /// nothing was left.
    func finishInterrupted() throws(NimbusError) -> String? {
        var done: String?
        if Self.exists(partial.url) || Self.exists(rollbackPartial.url) || Self.exists(dropping.url) {
            done = "removed an unfinished new root"
        }
        try remove(dropping.url)
        if Self.exists(restoring.url) {
            try moveIn(from: restoring.url)
            done = "finished an interrupted rollback"
        }
        let stagedMembers = (try? FileManager.default.contentsOfDirectory(atPath: staged.url.path)) ?? []
        if Self.exists(staged.url), !stagedMembers.contains(where: Self.members.contains) {
            // Everything moved in, root.json last: only the empty folder was left.
            try remove(staged.url)
            done = "finished an interrupted upgrade"
        } else if Self.exists(staged.url) {
            let next = Self.record(at: staged.rootRecord)?.id
            let named = (try? String(contentsOf: rollback.url.appending(path: "next"), encoding: .utf8))
            if let next, next == named {
                try moveIn(from: staged.url)
                done = "finished an interrupted upgrade"
            } else {
                try remove(staged.url)
                done = "abandoned an upgrade that had not begun to swap roots"
            }
        }
        try remove(partial.url)
        try remove(rollbackPartial.url)
        return done
    }

    // MARK: Files

    /// Renames each member found in `source` over the instance's own (a folder member replaces the folder),
    /// `root.json` last, then removes `source`. Each step can be repeated after a kill.
    private func moveIn(from source: URL) throws(NimbusError) {
        for member in Self.members {
            let from = source.appending(path: member)
            guard Self.exists(from) else { continue }
            let to = dir.url.appending(path: member)
            var isFolder: ObjCBool = false
            if FileManager.default.fileExists(atPath: from.path, isDirectory: &isFolder), isFolder.boolValue {
                try remove(to)
            }
            try rename(from, to)
        }
        try remove(source)
        AtomicFile.syncDirectory(dir.url)
    }

    /// Hard-links `url` (a file, or a folder's files) into `folder`; a missing `url` is skipped.
    private func link(_ url: URL, into folder: URL) throws(NimbusError) {
        var isFolder: ObjCBool = false
        guard FileManager.default.fileExists(atPath: url.path, isDirectory: &isFolder) else { return }
        let target = folder.appending(path: url.lastPathComponent)
        if isFolder.boolValue {
            try makeFolder(target)
            let names = (try? FileManager.default.contentsOfDirectory(atPath: url.path)) ?? []
            for name in names { try link(url.appending(path: name), into: target) }
            return
        }
        try checkpoint("link \(url.lastPathComponent)")
        guard Glibc.link(url.path, target.path) == 0 else {
            throw NimbusError(
                .io, "could not keep \(url.path) as the rollback point: \(String(cString: strerror(errno)))")
        }
    }

    private func makeFolder(_ url: URL) throws(NimbusError) {
        do {
            try FileManager.default.createDirectory(
                at: url, withIntermediateDirectories: false, attributes: [.posixPermissions: 0o700])
        } catch {
            throw NimbusError(.io, "could not create \(url.path)", cause: error)
        }
    }

    private func rename(_ from: URL, _ to: URL) throws(NimbusError) {
        try checkpoint("rename \(from.lastPathComponent)")
        guard Glibc.rename(from.path, to.path) == 0 else {
            throw NimbusError(
                .io, "could not move \(from.path) to \(to.path): \(String(cString: strerror(errno)))")
        }
        AtomicFile.syncDirectory(to.deletingLastPathComponent())
    }

    private func remove(_ url: URL) throws(NimbusError) {
        guard Self.exists(url) else { return }
        try checkpoint("remove \(url.lastPathComponent)")
        do {
            try FileManager.default.removeItem(at: url)
        } catch {
            throw NimbusError(.io, "could not remove \(url.path)", cause: error)
        }
    }
}
