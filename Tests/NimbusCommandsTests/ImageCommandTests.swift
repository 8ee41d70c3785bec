import ArgumentParser
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
