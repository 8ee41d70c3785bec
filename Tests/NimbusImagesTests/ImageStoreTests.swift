import Foundation
import NimbusCore
import NimbusDisks
import NimbusTestSupport
import Testing

@testable import NimbusImages

#if canImport(Glibc)
    import Glibc
#endif

@Suite("The image cache", .requires(.programs("qemu-img")))
struct ImageStoreTests {
    @Test("import hashes while copying, finds the format by magic, and answers to its name")
    func importImage() async throws {
        try await TemporaryDirectory.with { dir in
            let data = try await Fixtures.qcow2(in: dir.url, name: "local", megabytes: 2)
            let file = dir.url.appending(path: "debian-12-nocloud.raw-looking-name")
            try data.write(to: file)
            let store = try Fixtures.store(dir, server: nil)
            let image = try await store.importImage(file, name: "nocloud")
            #expect(image.sha256 == Fixtures.sha256(data))
            #expect(image.format == .qcow2)
            #expect(image.virtualSize == 2 << 20)
            #expect(image.name == "nocloud")
            #expect(image.source == file.absoluteString)
            #expect(try await store.info("nocloud").sha256 == image.sha256)
            // The import name is a reference of its own, and aliases may point at it.
            #expect(try await store.reference("nocloud") == .named("nocloud"))
            #expect(try await store.pull(.named("nocloud")).sha256 == image.sha256)
            try await store.setAlias("base", to: "nocloud")
            #expect(try await store.reference("base") == .named("nocloud"))
            // Importing the unchanged file again does not hash it: proven by changing a byte in place and
            // putting the modification time back, which the import then cannot notice.
            var status = stat()
            #expect(stat(file.path, &status) == 0)
            let handle = try FileHandle(forWritingTo: file)
            try handle.seek(toOffset: UInt64(data.count - 1))
            try handle.write(contentsOf: Data([data[data.count - 1] ^ 0xFF]))
            try handle.close()
            let mtime = "@\(status.st_mtim.tv_sec).\(String(format: "%09d", status.st_mtim.tv_nsec))"
            try await ProgramRunner.run("touch", ["-m", "-d", mtime, file.path])
            #expect(try await store.importImage(file, name: "nocloud").sha256 == image.sha256)
            // A new modification time is noticed, and the changed bytes make a new entry.
            try await ProgramRunner.run("touch", ["-m", file.path])
            let changed = try await store.importImage(file, name: "changed")
            #expect(changed.sha256 != image.sha256)
            try await store.remove("changed")
            try data.write(to: file)
            // Importing the same bytes again makes no second entry.
            let again = try await store.pull(.file(file), as: "file://" + file.path)
            #expect(again.sha256 == image.sha256)
            #expect(try await store.list().count == 1)
            #expect(again.references.contains("nocloud"))

            let missing = await #expect(throws: NimbusError.self) {
                try await store.importImage(dir.url.appending(path: "nope.qcow2"), name: "x")
            }
            #expect(missing?.code == .notFound)
            let xz = dir.url.appending(path: "image.qcow2.xz")
            try Data([0xFD, 0x37, 0x7A, 0x58, 0x5A, 0x00, 1, 2]).write(to: xz)
            let compressed = await #expect(throws: NimbusError.self) { try await store.importImage(xz, name: "x") }
            #expect(compressed?.message.contains("xz-compressed") == true)
            #expect(try await store.list().count == 1)
        }
    }

    @Test("prune keeps images an instance overlay is backed by, says why, and removes the rest")
    func prune() async throws {
        try await TemporaryDirectory.with { dir in
            // The disks the instance layer would give (InstanceStore.disks): one overlay, while its folder exists.
            let overlay = dir.paths.instances.appending(path: "web/disk.qcow2")
            let store = try Fixtures.store(dir, server: nil) { [(owner: "instance web (disk.qcow2)", file: overlay)] }
            let a = dir.url.appending(path: "a.img")
            let b = dir.url.appending(path: "b.img")
            try await Fixtures.qcow2(in: dir.url, name: "a", megabytes: 1).write(to: a)
            try await Fixtures.qcow2(in: dir.url, name: "b", megabytes: 1).write(to: b)
            let used = try await store.importImage(a, name: "used")
            let unused = try await store.importImage(b, name: "unused")
            let instance = dir.paths.instances.appending(path: "web")
            try FileManager.default.createDirectory(at: instance, withIntermediateDirectories: true)
            try await DiskImage.createOverlay(
                at: instance.appending(path: "disk.qcow2"), backedBy: used.url, size: 64 << 20)

            #expect(try await store.usage() == [used.sha256: ["instance web (disk.qcow2)"]])
            let refused = await #expect(throws: NimbusError.self) { try await store.remove("used") }
            #expect(refused?.code == .invalidState)
            #expect(refused?.message == "image used backs instance web (disk.qcow2): delete those instances first")

            let report = try await store.prune()
            #expect(report.removed.map(\.sha256) == [unused.sha256])
            #expect(report.kept.map(\.image.sha256) == [used.sha256])
            #expect(report.kept.map(\.usedBy) == [["instance web (disk.qcow2)"]])
            #expect(report.freed == unused.size)
            #expect(try await store.list().map(\.sha256) == [used.sha256])
            #expect(try await store.find("unused") == nil)

            try FileManager.default.removeItem(at: instance)
            #expect(try await store.remove("used").sha256 == used.sha256)
            #expect(try await store.list().isEmpty)
            let gone = await #expect(throws: NimbusError.self) { try await store.info("used") }
            #expect(gone?.message.contains("`nimbus image list` shows them") == true)
        }
    }

    /// A genuine ENOSPC: the cache is put on a 2 MiB tmpfs (root only; CI runs as root) and a 3 MiB
    /// image is pulled into it.
    @Test(
        "a disk too full for the image is a clear error, before a byte is written, and leaves no entry and no partial file",
        .requires(.root, .programs("mount", "umount")))
    func diskFull() async throws {
        let server = try await MirrorServer.start()
        try await TemporaryDirectory.with { dir in
            let image = try await Fixtures.qcow2(in: dir.url)
            try Fixtures.ubuntuTree(on: server, images: Fixtures.standardUbuntu, image: image)
            let cache = dir.paths.cache
            try FileManager.default.createDirectory(at: cache, withIntermediateDirectories: true)
            try await ProgramRunner.run("mount", ["-t", "tmpfs", "-o", "size=2m", "nimbus-test-full", cache.path])
            do {
                let store = try Fixtures.store(dir, server: server)
                let error = await #expect(throws: NimbusError.self) {
                    try await store.pull(.catalog(.ubuntu, release: "24.04", stream: "released"), arch: .amd64)
                }
                #expect(error?.code == .io)
                // The catalog names the size: the room is checked before a byte is written.
                #expect(
                    error?.message.contains("not enough space for") == true
                        && error?.message.contains("nothing was written") == true, "\(error?.message ?? "")")
                let images = (try? FileManager.default.contentsOfDirectory(atPath: dir.paths.images.path)) ?? []
                #expect(images.filter { $0.hasSuffix(".img") || $0.hasSuffix(".json") }.isEmpty)
                let partial =
                    (try? FileManager.default.contentsOfDirectory(
                        atPath: dir.paths.images.appending(path: ".partial").path)) ?? []
                #expect(partial.isEmpty)
            } catch {
                _ = try? await ProgramRunner.output("umount", ["-l", cache.path])
                throw error
            }
            _ = try await ProgramRunner.run("umount", [cache.path])
        }
        await server.stop()
    }
}
