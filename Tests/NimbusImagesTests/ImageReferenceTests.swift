import Foundation
import NimbusCore
import NimbusTestSupport
import Testing

@testable import NimbusImages

@Suite("Image references")
struct ImageReferenceTests {
    @Test("every documented form parses to its catalog, release and stream")
    func forms() throws {
        let cases: [(String, ImageReference)] = [
            ("ubuntu", .catalog(.ubuntu, release: nil, stream: "released")),
            ("ubuntu:24.04", .catalog(.ubuntu, release: "24.04", stream: "released")),
            ("ubuntu:noble", .catalog(.ubuntu, release: "noble", stream: "released")),
            ("ubuntu:lts", .catalog(.ubuntu, release: "lts", stream: "released")),
            ("ubuntu:daily:26.04", .catalog(.ubuntu, release: "26.04", stream: "daily")),
            ("debian", .catalog(.debian, release: "13", stream: nil)),
            ("debian:12", .catalog(.debian, release: "12", stream: nil)),
            ("debian:bookworm", .catalog(.debian, release: "12", stream: nil)),
            ("fedora-coreos", .catalog(.fedoraCoreOS, release: "stable", stream: nil)),
            ("fedora-coreos:testing", .catalog(.fedoraCoreOS, release: "testing", stream: nil)),
            ("fedora-coreos:next", .catalog(.fedoraCoreOS, release: "next", stream: nil)),
            (
                "file:///srv/images/debian-12-nocloud.qcow2",
                .file(URL(fileURLWithPath: "/srv/images/debian-12-nocloud.qcow2"))
            ),
            ("/srv/x.qcow2", .file(URL(fileURLWithPath: "/srv/x.qcow2"))),
            ("https://example.org/x.img", .url(URL(string: "https://example.org/x.img")!, checksum: nil)),
        ]
        for (text, expected) in cases {
            #expect(try ImageReference.parse(text) == expected, "\(text)")
        }
        #expect(try ImageReference.parse("ubuntu:daily:26.04").description == "ubuntu:daily:26.04")
        #expect(try ImageReference.parse("debian:bookworm").description == "debian:12")
    }

    @Test("an https reference takes a sha256 checksum; other references refuse one")
    func checksums() throws {
        let hex = String(repeating: "ab", count: 32)
        let reference = try ImageReference.parse("https://example.org/x.img", checksum: "sha256:\(hex)")
        #expect(reference == .url(URL(string: "https://example.org/x.img")!, checksum: Checksum(.sha256, hex)))
        let bad = #expect(throws: NimbusError.self) {
            try ImageReference.parse("https://example.org/x.img", checksum: "sha256:1234")
        }
        #expect(bad?.message.contains("sha256: followed by 64 hex digits") == true)
        let misplaced = #expect(throws: NimbusError.self) {
            try ImageReference.parse("debian:12", checksum: "sha256:\(hex)")
        }
        #expect(misplaced?.code == .invalidArgument)
    }

    @Test("an unknown Debian release or CoreOS stream lists the known ones")
    func unknownRelease() {
        let debian = #expect(throws: NimbusError.self) { try ImageReference.parse("debian:buzz") }
        #expect(debian?.code == .notFound)
        #expect(
            debian?.message
                == "Debian release \"buzz\" is not known: use one of 13 (trixie), 12 (bookworm), 11 (bullseye)")
        let coreos = #expect(throws: NimbusError.self) { try ImageReference.parse("fedora-coreos:beta") }
        #expect(coreos?.message.contains("use one of stable, testing, next") == true)
    }

    @Test("an unknown name suggests the forms and aliases; aliases expand, loops are caught")
    func aliases() throws {
        let unknown = #expect(throws: NimbusError.self) { try ImageReference.parse("centos") }
        #expect(unknown?.message.contains("nimbus image alias") == true)
        #expect(
            try ImageReference.parse("web", aliases: ["web": "ubuntu:24.04"])
                == .catalog(.ubuntu, release: "24.04", stream: "released"))
        let loop = #expect(throws: NimbusError.self) { try ImageReference.parse("a", aliases: ["a": "b", "b": "a"]) }
        #expect(loop?.message.contains("refers to itself") == true)
    }

    @Test("architectures take Debian and kernel names and refuse others")
    func architectures() throws {
        #expect(try Architecture(parsing: "x86_64") == .amd64)
        #expect(try Architecture(parsing: "aarch64") == .arm64)
        let error = #expect(throws: NimbusError.self) { try Architecture(parsing: "s390x") }
        #expect(error?.message == "architecture \"s390x\" is not supported: use amd64 or arm64")
    }

    @Test("aliases are stored under the config folder and validated", .timeLimit(.minutes(1)))
    func aliasStore() async throws {
        try await TemporaryDirectory.with { dir in
            let store = try Fixtures.store(dir, server: nil)
            try await store.setAlias("web", to: "ubuntu:24.04")
            #expect(try await store.aliases() == ["web": "ubuntu:24.04"])
            #expect(FileManager.default.fileExists(atPath: dir.paths.config.appending(path: "image-aliases.yaml").path))
            #expect(try await store.reference("web") == .catalog(.ubuntu, release: "24.04", stream: "released"))
            let reserved = await #expect(throws: NimbusError.self) { try await store.setAlias("debian", to: "ubuntu") }
            #expect(reserved?.code == .invalidArgument)
            let badTarget = await #expect(throws: NimbusError.self) { try await store.setAlias("db", to: "nosuch") }
            #expect(badTarget?.message.contains("is not known") == true)
            try await store.setAlias("web", to: nil)
            #expect(try await store.aliases().isEmpty)
        }
    }

    @Test("mirrors come from config.yaml's mirrors section, other keys ignored, env overriding")
    func mirrors() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let config = dir.url.appending(path: "config.yaml")
        try """
        cpus: 2
        driver: {name: qemu}
        mirrors:
          ubuntu: http://mirror.example/ubuntu
          fedora-coreos: https://fcos.example/
        """.write(to: config, atomically: true, encoding: .utf8)
        let mirrors = try Mirrors.load(
            configFile: config, environment: ["NIMBUS_MIRROR_DEBIAN": "http://deb.example/cloud"])
        #expect(mirrors.ubuntu.absoluteString == "http://mirror.example/ubuntu/")
        #expect(mirrors.debian.absoluteString == "http://deb.example/cloud/")
        #expect(mirrors.fedoraCoreOS.absoluteString == "https://fcos.example/")
        try "mirrors:\n  ubuntu: ftp://old\n".write(to: config, atomically: true, encoding: .utf8)
        let error = #expect(throws: NimbusError.self) { try Mirrors.load(configFile: config, environment: [:]) }
        #expect(error?.message.contains("mirrors.ubuntu") == true)
        let missing = try Mirrors.load(configFile: dir.url.appending(path: "none.yaml"), environment: [:])
        #expect(missing == .official)
    }
}
