import ArgumentParser
import Foundation
import NimbusCore
import NimbusDisks
import NimbusInstances
import NimbusTestSupport
import Testing

@testable import NimbusCommands

@Suite("nimbus image commands")
struct ImageCommandTests {
    @Test("the image commands parse their arguments")
    func parses() throws {
        let pull = try #require(
            try NimbusCommand.parseAsRoot(["image", "pull", "--arch", "arm64", "--refresh", "ubuntu:24.04"])
                as? ImagePull)
        #expect(pull.reference == "ubuntu:24.04")
        #expect(pull.catalog.refresh)
        #expect(try pull.catalog.architecture() == .arm64)
        let importing = try #require(
            try NimbusCommand.parseAsRoot(["image", "import", "--name", "nocloud", "/x.qcow2"]) as? ImageImport)
        #expect(importing.name == "nocloud")
        let list = try #require(
            try NimbusCommand.parseAsRoot(["image", "list", "--remote", "--format", "json"]) as? ImageList)
        #expect(list.remote)
        #expect(list.output.format == .json)
        let alias = try #require(
            try NimbusCommand.parseAsRoot(["image", "alias", "web", "ubuntu:24.04"]) as? ImageAlias)
        #expect(alias.name == "web" && alias.reference == "ubuntu:24.04")
        #expect(try NimbusCommand.parseAsRoot(["image", "prune"]) is ImagePrune)
        #expect(try NimbusCommand.parseAsRoot(["image", "info", "ubuntu"]) is ImageInfo)
        #expect(try NimbusCommand.parseAsRoot(["image", "rm", "a", "b"]) is ImageRemove)
    }

    @Test("argument mistakes are refused before any work: bad arch, rm without names, alias without a target")
    func validation() {
        #expect(throws: (any Error).self) {
            try NimbusCommand.parseAsRoot(["image", "pull", "--arch", "s390x", "ubuntu"])
        }
        #expect(throws: (any Error).self) { try NimbusCommand.parseAsRoot(["image", "rm"]) }
        #expect(throws: (any Error).self) { try NimbusCommand.parseAsRoot(["image", "alias", "web"]) }
        #expect(throws: (any Error).self) { try NimbusCommand.parseAsRoot(["image", "alias", "--remove"]) }
        #expect(throws: (any Error).self) { try NimbusCommand.parseAsRoot(["image", "list", "--format", "xml"]) }
    }

    @Test("progress without a terminal prints one line per 10%")
    func progressLines() {
        let display = ProgressDisplay(enabled: true, terminal: false)
        // Nothing to assert on stderr here without capturing it; the decile bookkeeping is what matters.
        for step in stride(from: 0, through: 100, by: 5) {
            display.update(.init(what: "x", bytes: UInt64(step), total: 100, resumedFrom: 0, finished: step == 100))
        }
        #expect(display.state.withLock { $0.lastDecile } == 10)
    }
}

/// `nimbus image rm` and `info` through the binary: the instance layer tells the image store which disks its
/// images back (`InstanceStore.disks`), so an image an instance's overlay is backed by is kept and named.
@Suite("Images in use", .requires(.programs("qemu-img")))
struct ImageInUseTests {
    @Test("rm refuses an image an instance's disk is backed by, naming the instance; info says who uses it")
    func inUse() async throws {
        try await TemporaryDirectory.with { home in
            let file = home.url.appending(path: "base.qcow2")
            try await DiskImage.createEmpty(at: file, size: 64 << 20)
            let imported = try await NimbusBinary.run(["image", "import", "--name", "base", file.path], home: home.url)
            #expect(imported.status == 0, "\(imported.standardError)")
            let store = InstanceStore(paths: home.paths)
            let cached = try #require(
                try FileManager.default.contentsOfDirectory(atPath: home.paths.images.path).first {
                    $0.hasSuffix(".img")
                })
            _ = try await store.create(InstanceSpec(name: try InstanceName("web"), image: "base")) { dir in
                try await DiskImage.createOverlay(at: dir.disk, backedBy: home.paths.images.appending(path: cached))
                return InstanceState()
            }
            #expect(store.disks().map(\.owner) == ["instance web (disk.qcow2)"])
            let refused = try await NimbusBinary.run(["image", "rm", "base"], home: home.url)
            #expect(refused.status == NimbusError.Code.invalidState.exitStatus, "\(refused.standardError)")
            #expect(refused.standardError.contains("backs instance web (disk.qcow2)"), "\(refused.standardError)")
            let info = try await NimbusBinary.run(["image", "info", "base"], home: home.url)
            #expect(info.standardOutput.contains("instance web (disk.qcow2)"), "\(info.standardOutput)")
            try FileManager.default.removeItem(at: store.directory(try InstanceName("web")).url)
            #expect(try await NimbusBinary.run(["image", "rm", "base"], home: home.url).status == 0)
        }
    }
}
