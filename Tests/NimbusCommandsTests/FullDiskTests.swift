import Foundation
import NimbusCore
import NimbusDisks
import NimbusInstances
import NimbusTestSupport
import Testing

/// NIMBUS_HOME on a small filesystem that fills up (a tmpfs the test mounts), through the binary: image
/// import and pull, snapshot create, a state write and launch fail naming the filesystem, what was needed and what
/// was free, and leave what was there as it was, with nothing half-written in the cache or the store (issue 19).
@Suite("A full disk", .serialized, .requires(.root, .programs("qemu-img", "mount", "umount", "python3")))
struct FullDiskTests {
    @Test(
        "image import and pull, snapshot create, delete (a state write) and launch on a full NIMBUS_HOME: each names the space, nothing half-written, the earlier state intact"
    )
    func fillUp() async throws {
        let outside = try TemporaryDirectory("nimbus-full")
        defer { outside.remove() }
        let home = outside.url.appending(path: "home")
        try FileManager.default.createDirectory(at: home, withIntermediateDirectories: true)
        try await ProgramRunner.run("mount", ["-t", "tmpfs", "-o", "size=24m", "nimbus-full", home.path])
        defer {
            let umount = Process()
            umount.executableURL = URL(fileURLWithPath: "/usr/bin/umount")
            umount.arguments = ["-l", home.path]
            try? umount.run()
            umount.waitUntilExit()
        }
        let paths = NimbusPaths.resolve(environment: ["NIMBUS_HOME": home.path])
        func nimbus(_ arguments: [String]) async throws -> ProgramOutput {
            try await NimbusBinary.run(arguments, home: home)
        }
        func cacheEntries() -> [String] {
            let names = (try? FileManager.default.contentsOfDirectory(atPath: paths.images.path)) ?? []
            let partial = (try? FileManager.default.contentsOfDirectory(atPath: paths.images.path + "/.partial")) ?? []
            return names.filter { $0.hasSuffix(".img") || $0.hasSuffix(".json") } + partial
        }

        // An image larger than the filesystem: refused before a byte is copied.
        let big = outside.url.appending(path: "big.raw")
        try await ProgramRunner.run("dd", ["if=/dev/urandom", "of=\(big.path)", "bs=1M", "count=32", "status=none"])
        var result = try await nimbus(["image", "import", big.path, "--name", "big"])
        #expect(result.status == NimbusError.Code.io.exitStatus, "\(result.standardError)")
        #expect(
            result.standardError.contains("not enough space for big (big.raw)")
                && result.standardError.contains("it needs 32 MiB")
                && result.standardError.contains("nothing was written"),
            "\(result.standardError)")
        #expect(cacheEntries().isEmpty, "\(cacheEntries())")
        // The same over HTTP (a plain URL: its size is known from the answer's Content-Length).
        let port = try #require(Loopback.freePort())
        let server = Process()
        server.executableURL = URL(fileURLWithPath: "/usr/bin/python3")
        server.arguments = ["-m", "http.server", "--bind", "127.0.0.1", "--directory", outside.url.path, "\(port)"]
        server.standardOutput = FileHandle.nullDevice
        server.standardError = FileHandle.nullDevice
        try server.run()
        defer {
            kill(server.processIdentifier, SIGKILL)
            server.waitUntilExit()
        }
        for _ in 0..<100 where Loopback.connectSocket(port: port).map({ close($0) }) == nil {
            try await Task.sleep(for: .milliseconds(50))
        }
        result = try await nimbus(["image", "pull", "http://127.0.0.1:\(port)/big.raw"])
        #expect(result.status == NimbusError.Code.io.exitStatus, "\(result.standardError)")
        #expect(
            result.standardError.contains("not enough space for") && result.standardError.contains("it needs 32 MiB"),
            "\(result.standardError)")
        #expect(cacheEntries().isEmpty, "\(cacheEntries())")

        // A small image and a stopped instance on it, then the filesystem filled to the last byte.
        let small = outside.url.appending(path: "small.qcow2")
        try await ProgramRunner.run("qemu-img", ["create", "-q", "-f", "qcow2", small.path, "64M"])
        result = try await nimbus(["image", "import", small.path, "--name", "small"])
        #expect(result.status == 0, "\(result.standardError)")
        let image = try #require(cacheEntries().first { $0.hasSuffix(".img") })
        let store = InstanceStore(paths: paths)
        _ = try await store.create(InstanceSpec(name: try InstanceName("web"), image: "small")) { dir in
            try await DiskImage.createOverlay(at: dir.disk, backedBy: paths.images.appending(path: image))
            var state = InstanceState()
            state.complete = true
            return state
        }
        // The installation's key, which the first launch makes, is there: the launch below gets as far as
        // the instance's own files.
        _ = try await InstanceManager(paths: paths, config: NimbusConfig()).installationKey()
        let web = store.directory(try InstanceName("web"))
        let stateBefore = try Data(contentsOf: web.state)
        let filler = home.appending(path: "filler")
        _ = try? await ProgramRunner.output("dd", ["if=/dev/zero", "of=\(filler.path)", "bs=64k"])
        #expect(DiskSpace.available(at: home) == 0)

        // snapshot create: qemu-img's ENOSPC told as a full filesystem; the disk still checks, without it.
        result = try await nimbus(["snapshot", "create", "web", "before"])
        #expect(result.status == NimbusError.Code.io.exitStatus, "\(result.standardError)")
        #expect(
            result.standardError.contains("could not take snapshot before of \(web.disk.path)")
                && result.standardError.contains("its filesystem is full (0 B free)"), "\(result.standardError)")
        // 0: clean; 3: clusters leaked by the failed write, which waste space and harm nothing.
        let check = try await ProgramRunner.output("qemu-img", ["check", "-q", web.disk.path])
        #expect(check.status == 0 || check.status == 3, "\(check.standardOutput) \(check.standardError)")
        #expect(try await DiskImage.snapshots(of: web.disk).isEmpty)

        // delete writes state.json: refused, and the state is the one before.
        result = try await nimbus(["delete", "web"])
        #expect(result.status == NimbusError.Code.io.exitStatus, "\(result.standardError)")
        #expect(result.standardError.contains("its filesystem is full"), "\(result.standardError)")
        #expect(try Data(contentsOf: web.state) == stateBefore)
        result = try await nimbus(["list"])
        #expect(result.standardOutput.contains("stopped"), "\(result.standardOutput)")

        // launch: fails naming the space, and leaves no instance, visible or staged.
        result = try await nimbus(["launch", "--no-wait", "--name", "web2", "small"])
        #expect(result.status == NimbusError.Code.io.exitStatus, "\(result.standardError)")
        #expect(result.standardError.contains("filesystem is full"), "\(result.standardError)")
        #expect(!result.standardError.contains("keys/id_ed25519"), "\(result.standardError)")
        let instances = try FileManager.default.contentsOfDirectory(atPath: paths.instances.path)
        #expect(instances == ["web"], "\(instances)")

        // With room again, the same commands work.
        try FileManager.default.removeItem(at: filler)
        result = try await nimbus(["snapshot", "create", "web", "before"])
        #expect(result.status == 0, "\(result.standardError)")
        result = try await nimbus(["delete", "--purge", "web"])
        #expect(result.status == 0, "\(result.standardError)")
    }
}
