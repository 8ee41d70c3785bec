import Foundation
import NimbusCore
import NimbusDisks
import NimbusImages
import NimbusSeed
import NimbusTestSupport
import Testing

@testable import NimbusInstances

/// Files Nimbus keeps and reads back, damaged as a crash, a full disk or a slip of the hand leaves them
/// (truncated, emptied, edited): the error names the file and the way out, the other instances go on, and
/// `doctor --fix` makes again what it can without a guess (issue 19). Real qcow2 files (qemu-img), a real
/// image cache; no guest.
@Suite("Damaged files", .requires(.programs("qemu-img")))
struct DamagedFilesTests {
    /// A store with an imported image and two stopped instances built on it, as launch builds them.
    struct Store {
        let dir: TemporaryDirectory
        let manager: InstanceManager
        let image: CachedImage
        let a: InstanceName
        let b: InstanceName

        init(_ dir: TemporaryDirectory) async throws {
            self.dir = dir
            a = try InstanceName("a")
            b = try InstanceName("b")
            manager = InstanceManager(paths: dir.paths, config: NimbusConfig())
            let file = dir.url.appending(path: "base.qcow2")
            try await ProgramRunner.run("qemu-img", ["create", "-q", "-f", "qcow2", file.path, "64M"])
            image = try await manager.imageStore(offline: true).importImage(file, name: "base")
            for name in [a, b] {
                _ = try await manager.store.create(InstanceSpec(name: name, image: "base")) { [image] staging in
                    try await DiskImage.createOverlay(at: staging.disk, backedBy: image.url)
                    let hostKey = SSHKeyPair(comment: "\(name) host key")
                    try AtomicFile.write(
                        Data("\(InstanceBuilder.hostAlias(name)) \(hostKey.publicKeyLine)\n".utf8),
                        to: staging.knownHosts)
                    try AtomicFile.write(Data(hostKey.openSSHPrivateKey.utf8), to: staging.hostKey)
                    var state = InstanceState()
                    state.imageDigest = image.sha256
                    state.complete = true
                    return state
                }
            }
        }

        func directory(_ name: InstanceName) -> InstanceDirectory { manager.store.directory(name) }

        /// Cuts `file` to half its length, as a crash in the middle of a write that was not atomic would.
        func truncate(_ file: URL) throws {
            let data = try Data(contentsOf: file)
            try data.prefix(data.count / 2).write(to: file)
        }

        func findings(fix: Bool) async -> [DoctorFinding] {
            await manager.checkStore(fix: fix) + manager.checkImageRecords(fix: fix)
        }
    }

    @Test(
        "a truncated state.json: its commands name the file and doctor --fix; the other instance goes on; doctor --fix makes it again from the folder"
    )
    func state() async throws {
        try await TemporaryDirectory.with { dir in
            let store = try await Store(dir)
            try store.truncate(store.directory(store.a).state)

            let error = await #expect(throws: NimbusError.self) { try await store.manager.info(store.a) }
            #expect(error?.code == .io)
            #expect(error?.message.contains("\(store.directory(store.a).state.path) is damaged") == true)
            #expect(error?.message.contains("`nimbus doctor --fix` makes it again") == true, "\(error?.message ?? "")")
            #expect(try await store.manager.info(store.b).state == .stopped)
            let listed = await store.manager.list()
            #expect(listed.map(\.state) == [.error, .stopped])

            let found = await store.findings(fix: false).filter { !$0.ok }
            #expect(found.count == 1 && found[0].subject == "instance a" && !found[0].fixed, "\(found)")
            #expect(found.first?.detail.contains("state.json is damaged") == true)

            let fixed = await store.findings(fix: true).filter { !$0.ok }
            #expect(fixed.count == 1 && fixed[0].fixed, "\(fixed)")
            #expect(fixed.first?.detail.contains("made again from the instance's folder") == true)
            let state = try store.manager.store.loadState(store.a)
            #expect(state.imageDigest == store.image.sha256 && state.complete && state.sshUser == "nimbus")
            #expect(try await store.manager.info(store.a).state == .stopped)
            #expect(await store.findings(fix: false).allSatisfy(\.ok))
        }
    }

    @Test("recover makes a damaged state.json again, as doctor --fix does")
    func recover() async throws {
        try await TemporaryDirectory.with { dir in
            let store = try await Store(dir)
            try Data().write(to: store.directory(store.a).state)
            try await store.manager.recover(store.a)
            #expect(try store.manager.store.loadState(store.a).imageDigest == store.image.sha256)
        }
    }

    @Test("a damaged instance.yaml is named with its line, and never rewritten: doctor --fix says it leaves it")
    func spec() async throws {
        try await TemporaryDirectory.with { dir in
            let store = try await Store(dir)
            let file = store.directory(store.a).spec
            let damaged = Data("name: a\nimage: base\ncpus: [2\n".utf8)
            try damaged.write(to: file)

            let error = await #expect(throws: NimbusError.self) { try await store.manager.info(store.a) }
            #expect(error?.code == .io)
            let message = error?.message ?? ""
            #expect(message.contains("\(file.path) is damaged (") && message.contains("line"), "\(message)")
            #expect(message.contains("`nimbus delete --purge a`"), "\(message)")
            #expect(try await store.manager.info(store.b).state == .stopped)

            let fixed = await store.findings(fix: true).filter { !$0.ok }
            #expect(fixed.count == 1 && !fixed[0].fixed, "\(fixed)")
            #expect(fixed.first?.detail.contains("not touched: it is the instance's definition") == true)
            #expect(try Data(contentsOf: file) == damaged)
        }
    }

    @Test("an emptied known_hosts: doctor says SSH fails, and --fix pins the kept host key again")
    func knownHosts() async throws {
        try await TemporaryDirectory.with { dir in
            let store = try await Store(dir)
            let folder = store.directory(store.b)
            let pinned = try Data(contentsOf: folder.knownHosts)
            try Data().write(to: folder.knownHosts)

            let found = await store.findings(fix: false).filter { !$0.ok }
            #expect(found.count == 1 && found[0].subject == "instance b", "\(found)")
            #expect(found.first?.detail.contains("known_hosts does not pin the instance's host key") == true)
            let fixed = await store.findings(fix: true).filter { !$0.ok }
            #expect(fixed.count == 1 && fixed[0].fixed, "\(fixed)")
            #expect(try Data(contentsOf: folder.knownHosts) == pinned)
        }
    }

    @Test(
        "a damaged image record: the image drops out of the list; --fix makes the record again from the image, or removes an unused image whose bytes changed, and leaves a used one"
    )
    func imageRecord() async throws {
        try await TemporaryDirectory.with { dir in
            let store = try await Store(dir)
            let images = try store.manager.imageStore(offline: true)
            let record = dir.paths.images.appending(path: "\(store.image.sha256).json")
            try store.truncate(record)
            #expect(try await images.list().isEmpty)

            let found = await store.findings(fix: false).filter { !$0.ok }
            #expect(found.count == 1 && found[0].subject == "image \(store.image.sha256.prefix(12))", "\(found)")
            #expect(found.first?.detail.contains("is damaged (not JSON)") == true, "\(found)")
            let fixed = await store.findings(fix: true).filter { !$0.ok }
            #expect(fixed.count == 1 && fixed[0].fixed, "\(fixed)")
            let remade = try #require(await images.entry(store.image.sha256))
            #expect(remade.format == store.image.format && remade.virtualSize == store.image.virtualSize)
            #expect(remade.size == store.image.size)

            // The image's bytes changed too: used by a and b, nothing is touched.
            try Data("{".utf8).write(to: record)
            let handle = try FileHandle(forWritingTo: store.image.url)
            try handle.seekToEnd()
            try handle.write(contentsOf: Data("x".utf8))
            try handle.close()
            let refused = await store.findings(fix: true).filter { !$0.ok }
            #expect(refused.count == 1 && !refused[0].fixed, "\(refused)")
            #expect(refused.first?.detail.contains("not touched") == true)
            #expect(
                refused.first?.detail.contains("instance a (disk.qcow2), instance b (disk.qcow2) are backed by it")
                    == true)
            #expect(FileManager.default.fileExists(atPath: store.image.path))

            // Unused, it goes.
            for name in [store.a, store.b] { try await store.manager.delete(name, purge: true) }
            let removed = await store.findings(fix: true).filter { !$0.ok }
            #expect(removed.count == 1 && removed[0].fixed, "\(removed)")
            #expect(!FileManager.default.fileExists(atPath: store.image.path))
            #expect(!FileManager.default.fileExists(atPath: record.path))
        }
    }
}
