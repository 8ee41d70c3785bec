import Foundation
import NimbusCore
import NimbusTestSupport
import Testing

@testable import NimbusImages

/// Mirrors laid out as the mirroring tools lay them out: an Ubuntu mirror of one stream (what `sstream-mirror`
/// writes: `streams/v1/index.json` at its top) beside the host root, a Debian mirror of one codename's tree
/// beside a mirror of `images/cloud/`.
@Suite(
    "Mirror layouts",
    .requires(.programs("qemu-img")))
struct MirrorLayoutTests {
    static let noble = ImageReference.catalog(.ubuntu, release: "24.04", stream: "released")
    static let nobleDaily = ImageReference.catalog(.ubuntu, release: "24.04", stream: "daily")
    static let amd64Path = "server/releases/noble/release-20240423.1/ubuntu-24.04-server-cloudimg-amd64.img"

    /// A products file `sstream-mirror` syncs every index entry of: the fixture's image-ids entry is served too.
    static func serveImageIDs(_ server: MirrorServer, stream: String = "released", root: String = "releases/") {
        server.put(
            "\(root)streams/v1/com.ubuntu.cloud:\(stream):aws.json",
            "{\"content_id\": \"com.ubuntu.cloud:\(stream):aws\", \"datatype\": \"image-ids\", "
                + "\"format\": \"products:1.0\", \"products\": {}}")
    }

    /// Runs the real sstream-mirror from `source` into a new folder of `dir`, keeping noble's disk images, and
    /// returns the folder.
    static func sstreamMirror(_ arguments: [String], source: URL, in dir: TemporaryDirectory) async throws -> URL {
        let output = dir.url.appending(path: "mirror-\(UUID().uuidString.prefix(8))", directoryHint: .isDirectory)
        try await ProgramRunner.run(
            "sstream-mirror",
            arguments + [source.absoluteString, output.path, "release=noble", "ftype~(disk1.img|uefi1.img)"])
        return output
    }

    /// The layout is remembered; daily from it, or its index read with a keyring, say what the mirror holds.
    @Test(
        "Ubuntu: a mirror made by sstream-mirror (index at its top) serves ubuntu:24.04",
        .requires(.programs("sstream-mirror")))
    func sstreamMirrorUnsigned() async throws {
        let upstream = try await MirrorServer.start()
        let mirror = try await MirrorServer.start()
        try await TemporaryDirectory.with { dir in
            let image = try await Fixtures.qcow2(in: dir.url, megabytes: 1)
            try Fixtures.ubuntuTree(on: upstream, images: Fixtures.standardUbuntu, image: image)
            Self.serveImageIDs(upstream)
            let tree = try await Self.sstreamMirror(
                ["--no-verify", "--max=1", "--path", "streams/v1/index.json"],
                source: upstream.url("releases/"), in: dir)
            // What sstream-mirror wrote: the index at the top, the items at their `path`s below it.
            #expect(FileManager.default.fileExists(atPath: tree.appending(path: "streams/v1/index.json").path))
            #expect(FileManager.default.fileExists(atPath: tree.appending(path: Self.amd64Path).path))
            #expect(!FileManager.default.fileExists(atPath: tree.appending(path: "releases").path))
            try mirror.putTree(tree)

            let store = try Fixtures.store(dir, server: mirror)
            let cached = try await store.pull(try ImageReference.parse("ubuntu:24.04"), arch: .amd64)
            #expect(cached.sha256 == Fixtures.sha256(image))
            #expect(cached.version == "20240423.1")
            #expect(cached.source == mirror.url(Self.amd64Path).absoluteString)
            #expect(mirror.requests(Self.amd64Path).count == 1)
            // The host-root path was asked once, when the layout was not known yet.
            #expect(mirror.requests("releases/streams/v1/index.json").count == 1)

            // A later process resolves from the cached metadata and the remembered layout: no request at all.
            let before = mirror.requestCount
            let again = try Fixtures.store(dir, server: mirror)
            let remote = try await again.resolve(Self.noble, arch: .amd64)
            #expect(remote.url == mirror.url(Self.amd64Path))
            _ = try await again.pull(Self.noble, arch: .amd64)
            #expect(mirror.requestCount == before)

            // The mirror holds the released stream only: daily is refused, naming the mirror and what it holds.
            let daily = await #expect(throws: NimbusError.self) {
                try await again.resolve(Self.nobleDaily, arch: .amd64)
            }
            #expect(daily?.code == .notFound)
            #expect(
                daily?.message
                    == "the Ubuntu mirror \(mirror.base.absoluteString) holds one stream "
                    + "(\(mirror.url("streams/v1/index.json").absoluteString) is at its top, as sstream-mirror writes "
                    + "it): the released stream (com.ubuntu.cloud:released:download), not daily; use ubuntu:<release> "
                    + "for its images, or set mirrors.ubuntu in config.yaml (or NIMBUS_MIRROR_UBUNTU) to a host root "
                    + "holding releases/ and daily/ or to a mirror of the daily stream")

            // Checking signatures needs the signed index, which a mirror made from index.json does not have.
            let signed = try Fixtures.store(dir, server: mirror, keyring: .file(dir.url.appending(path: "keyring.gpg")))
            let unsigned = await #expect(throws: NimbusError.self) {
                try await signed.resolve(Self.noble, arch: .amd64)
            }
            #expect(unsigned?.code == .notFound)
            #expect(
                unsigned?.message
                    == "the Ubuntu released image index is not on the mirror: neither "
                    + "\(mirror.url("releases/streams/v1/index.sjson").absoluteString) (a host root holding releases/ "
                    + "and daily/) nor \(mirror.url("streams/v1/index.sjson").absoluteString) (a mirror of one stream, "
                    + "as sstream-mirror writes it) is there; the mirror has only the unsigned "
                    + "\(mirror.url("streams/v1/index.json").absoluteString), and signatures are checked: make the "
                    + "mirror from the signed streams/v1/index.sjson (sstream-mirror's default)")
        }
        await upstream.stop()
        await mirror.stop()
    }

    /// Without a keyring, the error says to install one.
    @Test(
        "Ubuntu: sstream-mirror's default signed mirror (index.sjson only) is read and checked with the keyring",
        .requires(.programs("sstream-mirror", "gpg", "gpgv", "gpgconf")))
    func sstreamMirrorSigned() async throws {
        let upstream = try await MirrorServer.start()
        let mirror = try await MirrorServer.start()
        try await TemporaryDirectory.with { dir in
            try await TestSigner.with(["cloudimage"], in: dir.url) { signers in
                let signer = signers[0]
                let image = try await Fixtures.qcow2(in: dir.url, megabytes: 1)
                let products = try Fixtures.ubuntuTree(on: upstream, images: Fixtures.standardUbuntu, image: image)
                Self.serveImageIDs(upstream)
                // As cloud-images.ubuntu.com signs it: index.sjson names the .sjson products files.
                let indexData = try #require(upstream.file("releases/streams/v1/index.json"))
                let indexText = String(decoding: indexData, as: UTF8.self).replacingOccurrences(
                    of: ".json", with: ".sjson")
                upstream.put(
                    "releases/streams/v1/index.sjson", try await signer.clearsign(Data(indexText.utf8), in: dir.url))
                for path in [products, "releases/streams/v1/com.ubuntu.cloud:released:aws.json"] {
                    let body = try #require(upstream.file(path))
                    upstream.put(
                        String(path.dropLast(5)) + ".sjson", try await signer.clearsign(body, in: dir.url))
                }
                let tree = try await Self.sstreamMirror(
                    ["--keyring", signer.keyring.path, "--max=1"], source: upstream.url("releases/"), in: dir)
                #expect(FileManager.default.fileExists(atPath: tree.appending(path: "streams/v1/index.sjson").path))
                #expect(!FileManager.default.fileExists(atPath: tree.appending(path: "streams/v1/index.json").path))
                try mirror.putTree(tree)

                let store = try Fixtures.store(dir, server: mirror, keyring: .file(signer.keyring))
                let cached = try await store.pull(Self.noble, arch: .amd64)
                #expect(cached.sha256 == Fixtures.sha256(image))
                #expect(cached.source == mirror.url(Self.amd64Path).absoluteString)

                let plain = try Fixtures.store(dir, server: mirror, keyring: .none)
                let error = await #expect(throws: NimbusError.self) {
                    try await plain.resolve(Self.noble, arch: .amd64)
                }
                #expect(error?.code == .notFound)
                #expect(
                    error?.message
                        == "the Ubuntu released image index is not on the mirror: neither "
                        + "\(mirror.url("releases/streams/v1/index.json").absoluteString) (a host root holding "
                        + "releases/ and daily/) nor \(mirror.url("streams/v1/index.json").absoluteString) (a mirror "
                        + "of one stream, as sstream-mirror writes it) is there; the mirror has only the signed "
                        + "\(mirror.url("streams/v1/index.sjson").absoluteString) (sstream-mirror's default), which is "
                        + "read with a keyring: install /usr/share/keyrings/ubuntu-cloudimage-keyring.gpg "
                        + "(ubuntu-keyring) or set NIMBUS_UBUNTU_KEYRING to a keyring file")
            }
        }
        await upstream.stop()
        await mirror.stop()
    }

    @Test("Ubuntu: a host root is read from releases/ and daily/ without asking for a stream root's index")
    func ubuntuHostRoot() async throws {
        let server = try await MirrorServer.start()
        try await TemporaryDirectory.with { dir in
            let image = try await Fixtures.qcow2(in: dir.url, megabytes: 1)
            try Fixtures.ubuntuTree(on: server, images: Fixtures.standardUbuntu, image: image)
            try Fixtures.ubuntuTree(on: server, stream: "daily", images: Fixtures.standardUbuntu, image: image)
            let store = try Fixtures.store(dir, server: server)
            let cached = try await store.pull(Self.noble, arch: .amd64)
            #expect(cached.source == server.url("releases/" + Self.amd64Path).absoluteString)
            let daily = try await store.resolve(Self.nobleDaily, arch: .amd64)
            #expect(daily.url.absoluteString.hasPrefix(server.url("daily/server/noble/").absoluteString))
            #expect(server.requests("streams/v1/index.json").isEmpty)
            // Nothing is noted for a mirror with the publisher's layout.
            let notes = try FileManager.default.contentsOfDirectory(atPath: dir.paths.metadata.path)
            #expect(!notes.contains { $0.hasPrefix("layout-") })
        }
        await server.stop()
    }

    @Test("Ubuntu: a mirror of the daily stream serves ubuntu:daily: and refuses the released stream")
    func ubuntuDailyStreamRoot() async throws {
        let server = try await MirrorServer.start()
        try await TemporaryDirectory.with { dir in
            let image = try await Fixtures.qcow2(in: dir.url, megabytes: 1)
            try Fixtures.ubuntuTree(
                on: server, stream: "daily", root: "", images: Fixtures.standardUbuntu, image: image)
            let store = try Fixtures.store(dir, server: server)
            let daily = try await store.resolve(Self.nobleDaily, arch: .amd64)
            #expect(daily.url == server.url("server/noble/20240423.1/ubuntu-24.04-server-cloudimg-amd64.img"))
            let released = await #expect(throws: NimbusError.self) { try await store.resolve(Self.noble, arch: .amd64) }
            #expect(released?.code == .notFound)
            #expect(
                released?.message
                    == "the Ubuntu mirror \(server.base.absoluteString) holds one stream "
                    + "(\(server.url("streams/v1/index.json").absoluteString) is at its top, as sstream-mirror writes "
                    + "it): the daily stream (com.ubuntu.cloud:daily:download), not released; use "
                    + "ubuntu:daily:<release> for its images, or set mirrors.ubuntu in config.yaml (or "
                    + "NIMBUS_MIRROR_UBUNTU) to a host root holding releases/ and daily/ or to a mirror of the released "
                    + "stream")
        }
        await server.stop()
    }

    @Test("Ubuntu: a mirror URL that names cloud-images' releases/ folder itself is a mirror of one stream")
    func ubuntuReleasesFolder() async throws {
        let server = try await MirrorServer.start()
        try await TemporaryDirectory.with { dir in
            try Fixtures.ubuntuTree(on: server, images: Fixtures.standardUbuntu, image: Data("x".utf8))
            var options = ImageStore.Options()
            options.keyring = .none
            let store = try ImageStore(
                paths: dir.paths,
                mirrors: Mirrors(ubuntu: server.url("releases"), debian: server.base, fedoraCoreOS: server.base),
                options: options, environment: [:])
            let remote = try await store.resolve(Self.noble, arch: .amd64)
            #expect(remote.url == server.url("releases/" + Self.amd64Path))
        }
        await server.stop()
    }

    @Test("Ubuntu: a mirror that moves from one layout to the other is followed, and the note follows it")
    func ubuntuLayoutChange() async throws {
        let server = try await MirrorServer.start()
        try await TemporaryDirectory.with { dir in
            try Fixtures.ubuntuTree(on: server, root: "", images: Fixtures.standardUbuntu, image: Data("x".utf8))
            let cache = MetadataCache(
                folder: dir.paths.metadata, maxAge: 3600, refresh: false, policy: RetryPolicy(), warn: { _ in })
            _ = try await Fixtures.store(dir, server: server).resolve(Self.noble, arch: .amd64)
            #expect(cache.rememberedLayout(catalog: "ubuntu", mirror: server.base) == .part)
            // The site reorganizes its mirror as a host root.
            server.remove("streams/v1/index.json")
            try Fixtures.ubuntuTree(on: server, images: Fixtures.standardUbuntu, image: Data("x".utf8))
            let remote = try await Fixtures.store(dir, server: server, refresh: true).resolve(Self.noble, arch: .amd64)
            #expect(remote.url == server.url("releases/" + Self.amd64Path))
            #expect(cache.rememberedLayout(catalog: "ubuntu", mirror: server.base) == nil)
        }
        await server.stop()
    }

    @Test("Ubuntu: a mirror with no index in either layout names both places it looked")
    func ubuntuNoIndex() async throws {
        let server = try await MirrorServer.start()
        try await TemporaryDirectory.with { dir in
            let store = try Fixtures.store(dir, server: server)
            let error = await #expect(throws: NimbusError.self) { try await store.resolve(Self.noble, arch: .amd64) }
            #expect(error?.code == .notFound)
            #expect(
                error?.message
                    == "the Ubuntu released image index is not on the mirror: neither "
                    + "\(server.url("releases/streams/v1/index.json").absoluteString) (a host root holding releases/ "
                    + "and daily/) nor \(server.url("streams/v1/index.json").absoluteString) (a mirror of one stream, "
                    + "as sstream-mirror writes it) is there; check mirrors.ubuntu in config.yaml or "
                    + "NIMBUS_MIRROR_UBUNTU")
        }
        await server.stop()
    }

    /// A Debian codename tree as cloud.debian.org publishes `bookworm/`: `latest/` and a dated folder.
    static func bookwormTree(on server: MirrorServer, under prefix: String, image: Data) {
        for folder in ["latest/", "20240429-1732/"] {
            let suffix = folder == "latest/" ? "" : "-20240429-1732"
            server.put("\(prefix)\(folder)debian-12-genericcloud-amd64\(suffix).qcow2", image)
            server.put(
                "\(prefix)\(folder)SHA512SUMS",
                """
                \(Fixtures.sha512(Data("raw".utf8)))  debian-12-genericcloud-amd64\(suffix).raw
                \(Fixtures.sha512(image))  debian-12-genericcloud-amd64\(suffix).qcow2
                \(Fixtures.sha512(Data("nocloud".utf8)))  debian-12-nocloud-amd64\(suffix).qcow2

                """)
            // Beside each image, as on Debian's mirrors, its build record naming the serial.
            server.put(
                "\(prefix)\(folder)debian-12-genericcloud-amd64\(suffix).json",
                CatalogTests.debianBuildRecord("20240429-1732"))
        }
    }

    @Test("Debian: a mirror of one codename's tree (latest/ at its top) serves that release and refuses others")
    func debianCodenameTree() async throws {
        let server = try await MirrorServer.start()
        try await TemporaryDirectory.with { dir in
            let image = try await Fixtures.qcow2(in: dir.url, megabytes: 1)
            Self.bookwormTree(on: server, under: "debian/", image: image)
            let store = try Fixtures.store(dir, server: server)
            let cached = try await store.pull(try ImageReference.parse("debian:bookworm"), arch: .amd64)
            #expect(cached.sha512 == Fixtures.sha512(image))
            #expect(cached.source == server.url("debian/latest/debian-12-genericcloud-amd64.qcow2").absoluteString)
            #expect(server.requests("debian/bookworm/latest/SHA512SUMS").count == 1)
            // Remembered: a later process asks the mirror nothing.
            let before = server.requestCount
            let remote = try await Fixtures.store(dir, server: server).resolve(
                .catalog(.debian, release: "12", stream: nil), arch: .amd64)
            #expect(remote.url == server.url("debian/latest/debian-12-genericcloud-amd64.qcow2"))
            #expect(remote.version == "20240429-1732")
            #expect(server.requestCount == before)

            let trixie = await #expect(throws: NimbusError.self) {
                try await store.resolve(.catalog(.debian, release: "13", stream: nil), arch: .amd64)
            }
            #expect(trixie?.code == .notFound)
            #expect(
                trixie?.message
                    == "the Debian mirror \(server.url("debian/").absoluteString) is one codename's tree "
                    + "(\(server.url("debian/latest/SHA512SUMS").absoluteString) is at its top) and holds Debian 12 "
                    + "(bookworm), not Debian 13 (trixie); use debian:12 for its images, or set mirrors.debian in "
                    + "config.yaml (or NIMBUS_MIRROR_DEBIAN) to a mirror of images/cloud/ holding <codename>/latest/ "
                    + "or to a mirror of trixie/")
            // The image list reports the other releases as warnings and still lists bookworm.
            let log = WarningLog()
            let listing = try Fixtures.store(dir, server: server, warnings: log)
            let available = await listing.available(arch: .amd64)
            #expect(available.contains { $0.image.reference == "debian:12" && $0.cached })
            #expect(log.all.contains { $0.hasPrefix("warning: debian:13: the Debian mirror") })
        }
        await server.stop()
    }

    @Test("Debian: a latest/ whose SHA512SUMS names no debian-<N>- file is refused as holding no release")
    func debianCodenameTreeUnknown() async throws {
        let server = try await MirrorServer.start()
        try await TemporaryDirectory.with { dir in
            server.put("debian/latest/SHA512SUMS", "\(Fixtures.sha512(Data("x".utf8)))  disk.qcow2\n")
            let store = try Fixtures.store(dir, server: server)
            let error = await #expect(throws: NimbusError.self) {
                try await store.resolve(.catalog(.debian, release: "12", stream: nil), arch: .amd64)
            }
            #expect(error?.code == .notFound)
            #expect(
                error?.message
                    == "the Debian mirror \(server.url("debian/").absoluteString) is one codename's tree "
                    + "(\(server.url("debian/latest/SHA512SUMS").absoluteString) is at its top) and holds no "
                    + "debian-<N>- image, not Debian 12 (bookworm); set mirrors.debian in config.yaml (or "
                    + "NIMBUS_MIRROR_DEBIAN) to a mirror of images/cloud/ holding <codename>/latest/ or to a mirror of "
                    + "bookworm/")
        }
        await server.stop()
    }

    @Test("Debian: a mirror of images/cloud/ is read as before; one with neither layout names both places")
    func debianImagesCloud() async throws {
        let server = try await MirrorServer.start()
        try await TemporaryDirectory.with { dir in
            let image = try await Fixtures.qcow2(in: dir.url, megabytes: 1)
            Self.bookwormTree(on: server, under: "debian/bookworm/", image: image)
            let store = try Fixtures.store(dir, server: server)
            let remote = try await store.resolve(.catalog(.debian, release: "12", stream: nil), arch: .amd64)
            #expect(remote.url == server.url("debian/bookworm/latest/debian-12-genericcloud-amd64.qcow2"))
            #expect(server.requests("debian/latest/SHA512SUMS").isEmpty)
            let missing = await #expect(throws: NimbusError.self) {
                try await store.resolve(.catalog(.debian, release: "13", stream: nil), arch: .amd64)
            }
            #expect(missing?.code == .notFound)
            #expect(
                missing?.message
                    == "the Debian trixie checksum list is not on the mirror: neither "
                    + "\(server.url("debian/trixie/latest/SHA512SUMS").absoluteString) (a mirror of images/cloud/ "
                    + "holding <codename>/latest/) nor \(server.url("debian/latest/SHA512SUMS").absoluteString) (a "
                    + "mirror of one codename's tree) is there; check mirrors.debian in config.yaml or "
                    + "NIMBUS_MIRROR_DEBIAN")
        }
        await server.stop()
    }
}
