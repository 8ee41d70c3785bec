import Foundation
import NimbusCore
import NimbusTestSupport
import Synchronization
import Testing

@testable import NimbusInstances

/// The root swap of `upgrade` and `rollback`, stopped at every file-system step as a kill would stop it: what
/// `finishInterrupted` makes of each leaves the instance on one whole root (disk, seed, spec and record of the
/// same root), never neither and never a mix.
@Suite("Root swap")
struct RootSwapTests {
    struct Stop: Error {}

    /// An instance folder on root `old` (never upgraded: no root.json, as after launch), optionally with a
    /// rollback point `older`, and a new root `new` staged in upgrade.new/.
    func fixture(_ folder: URL, withOlderRollback: Bool) throws -> RootSwap {
        let dir = InstanceDirectory(url: folder)
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        for (file, text) in [("disk.qcow2", "disk old"), ("seed.iso", "seed old"), ("instance.yaml", "spec old")] {
            try Data(text.utf8).write(to: folder.appending(path: file))
        }
        let swap = RootSwap(dir: dir)
        if withOlderRollback {
            let older = swap.rollback.url
            try FileManager.default.createDirectory(at: older, withIntermediateDirectories: true)
            for (file, text) in [
                ("disk.qcow2", "disk older"), ("seed.iso", "seed older"), ("instance.yaml", "spec older"),
            ] {
                try Data(text.utf8).write(to: older.appending(path: file))
            }
            try RootSwap.write(record("older", generation: 0), to: older.appending(path: "root.json"))
            try Data("id-of-old".utf8).write(to: older.appending(path: "next"))
        }
        let staging = try swap.beginStaging()
        for (file, text) in [("disk.qcow2", "disk new"), ("seed.iso", "seed new"), ("instance.yaml", "spec new")] {
            try Data(text.utf8).write(to: staging.url.appending(path: file))
        }
        try RootSwap.write(record("new", generation: 1), to: staging.rootRecord)
        try swap.finishStaging()
        return swap
    }

    func record(_ name: String, generation: Int) -> RootRecord {
        RootRecord(
            id: "id-of-\(name)", image: "image \(name)", imageDigest: name, imageDescription: name,
            seedInstanceID: "iid-\(name)", generation: generation, madeAt: Date(timeIntervalSince1970: 0))
    }

    /// Which root the folder is on, after checking that its disk, seed and spec all belong to it.
    func root(_ folder: URL) throws -> String {
        func word(_ file: String) throws -> String {
            String(try String(contentsOf: folder.appending(path: file), encoding: .utf8).split(separator: " ")[1])
        }
        let disk = try word("disk.qcow2")
        #expect(try word("seed.iso") == disk, "seed and disk of different roots in \(folder.path)")
        #expect(try word("instance.yaml") == disk, "spec and disk of different roots in \(folder.path)")
        let record = RootSwap.record(at: folder.appending(path: "root.json"))
        #expect(
            (record?.imageDigest ?? "old") == disk, "root.json names \(record?.imageDigest ?? "-"), disk is \(disk)")
        return disk
    }

    func leftovers(_ folder: URL) throws -> [String] {
        try FileManager.default.contentsOfDirectory(atPath: folder.path).filter {
            $0.hasPrefix("upgrade.") || ($0.hasPrefix("rollback.") && $0 != "rollback")
        }
    }

    /// The steps of an uninterrupted run of `body`, by name.
    func steps(_ body: (RootSwap) throws -> Void, withOlderRollback: Bool) throws -> [String] {
        let folder = try TemporaryDirectory("nimbus-rootswap")
        defer { folder.remove() }
        let names = Mutex<[String]>([])
        var swap = try fixture(folder.url, withOlderRollback: withOlderRollback)
        swap.checkpoint = { step in names.withLock { $0.append(step) } }
        try body(swap)
        return names.withLock { $0 }
    }

    @Test(
        "a commit stopped at any step ends on the old root or the new one, and the old root is kept when on the new",
        arguments: [false, true])
    func commitInterrupted(withOlderRollback: Bool) throws {
        let commit: (RootSwap) throws -> Void = { try $0.commit(current: record("old", generation: 0)) }
        let all = try steps(commit, withOlderRollback: withOlderRollback)
        #expect(all.count > 8, "\(all)")
        for stop in 0...all.count {
            let folder = try TemporaryDirectory("nimbus-rootswap")
            defer { folder.remove() }
            var swap = try fixture(folder.url, withOlderRollback: withOlderRollback)
            let count = Mutex(0)
            swap.checkpoint = { _ throws(NimbusError) in
                let reached = count.withLock { value -> Bool in
                    defer { value += 1 }
                    return value == stop
                }
                if reached { throw NimbusError(.io, "stopped") }
            }
            let finished = (try? commit(swap)) != nil
            #expect(finished == (stop == all.count))
            _ = try RootSwap(dir: swap.dir).finishInterrupted()
            let on = try root(folder.url)
            #expect(on == "old" || on == "new", "stopped at \(stop < all.count ? all[stop] : "the end")")
            if on == "new" {
                // The old root is the rollback point, whole.
                #expect(try root(swap.rollback.url) == "old", "stopped at \(stop < all.count ? all[stop] : "the end")")
            }
            #expect(try leftovers(folder.url).isEmpty, "stopped at \(stop < all.count ? all[stop] : "the end")")
        }
    }

    @Test("a rollback stopped at any step ends on the old root (finished) or the new one (with its rollback point)")
    func restoreInterrupted() throws {
        let setUp: (URL) throws -> RootSwap = { url in
            let swap = try fixture(url, withOlderRollback: false)
            try swap.commit(current: record("old", generation: 0))
            return swap
        }
        let names = Mutex<[String]>([])
        do {
            let folder = try TemporaryDirectory("nimbus-rootswap")
            defer { folder.remove() }
            var swap = try setUp(folder.url)
            swap.checkpoint = { step in names.withLock { $0.append(step) } }
            try swap.restore()
        }
        let all = names.withLock { $0 }
        for stop in 0...all.count {
            let folder = try TemporaryDirectory("nimbus-rootswap")
            defer { folder.remove() }
            var swap = try setUp(folder.url)
            let count = Mutex(0)
            swap.checkpoint = { _ throws(NimbusError) in
                if count.withLock({ value in
                    defer { value += 1 }
                    return value == stop
                }) {
                    throw NimbusError(.io, "stopped")
                }
            }
            _ = try? swap.restore()
            _ = try RootSwap(dir: swap.dir).finishInterrupted()
            let on = try root(folder.url)
            if on == "new" {
                #expect(try root(swap.rollback.url) == "old")
            } else {
                #expect(on == "old")
                #expect(!swap.hasRollback)
            }
            #expect(try leftovers(folder.url).isEmpty)
        }
    }

    @Test(
        "list finishes a commit a killed upgrade left half moved in, unless another process holds the instance's lock"
    )
    func listFinishesInterruptedSwap() async throws {
        try await TemporaryDirectory.with { folder in
            let manager = InstanceManager(paths: folder.paths, config: NimbusConfig())
            let name = try InstanceName("web")
            let dir = try await manager.store.create(InstanceSpec(name: name, image: "debian:12")) { staging in
                try Data("disk old".utf8).write(to: staging.disk)
                var state = InstanceState()
                state.imageDigest = "old"
                return state
            }
            var swap = RootSwap(dir: dir)
            let staging = try swap.beginStaging()
            try Data("disk new".utf8).write(to: staging.disk)
            try InstanceStore.writeSpec(InstanceSpec(name: name, image: "debian:13"), to: staging.spec)
            try RootSwap.write(record("new", generation: 1), to: staging.rootRecord)
            try swap.finishStaging()
            // Killed after the rollback point was made, as the new root's disk moved in.
            swap.checkpoint = { step throws(NimbusError) in
                if step == "rename disk.qcow2" { throw NimbusError(.io, "killed") }
            }
            #expect(throws: NimbusError.self) { try swap.commit(current: record("old", generation: 0)) }
            #expect(swap.isUnfinished)

            // An upgrade at work holds the lock: list leaves its swap alone.
            try await manager.store.withLock(name) { _ in
                let listed = await manager.list()
                #expect(listed.map(\.name) == ["web"])
                #expect(swap.isUnfinished)
            }
            let listed = await manager.list()
            #expect(!swap.isUnfinished)
            #expect(listed.first?.image == "debian:13")
            #expect(try String(contentsOf: dir.disk, encoding: .utf8) == "disk new")
            #expect(try manager.store.loadState(name).imageDigest == "new")
            #expect(swap.hasRollback)
        }
    }

    @Test("a staged root next to a rollback point from an earlier upgrade is abandoned, not moved in")
    func staleRollbackPoint() throws {
        let folder = try TemporaryDirectory("nimbus-rootswap")
        defer { folder.remove() }
        let swap = try fixture(folder.url, withOlderRollback: true)
        #expect(try swap.finishInterrupted() == "abandoned an upgrade that had not begun to swap roots")
        #expect(try root(folder.url) == "old")
        #expect(try root(swap.rollback.url) == "older")
    }
}
