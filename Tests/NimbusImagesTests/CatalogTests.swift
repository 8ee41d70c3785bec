import Foundation
import NimbusCore
import NimbusTestSupport
import Testing

@testable import NimbusImages

@Suite(
    "Catalogs in their published formats",
    .requires(.programs("qemu-img", "xz")))
struct CatalogTests {
    @Test("Ubuntu: default is the LTS, by version or codename, newest serial as a string, uefi1.img preferred")
    func ubuntuResolution() async throws {
        let server = try await MirrorServer.start()
        try await TemporaryDirectory.with { dir in
            let image = try await Fixtures.qcow2(in: dir.url, megabytes: 1)
            try Fixtures.ubuntuTree(on: server, images: Fixtures.standardUbuntu, image: image)
            let store = try Fixtures.store(dir, server: server)
            for text in ["ubuntu", "ubuntu:lts", "ubuntu:24.04", "ubuntu:noble"] {
                let remote = try await store.resolve(try ImageReference.parse(text), arch: .amd64)
                #expect(remote.reference == "ubuntu:24.04", "\(text)")
                #expect(remote.version == "20240423.1", "\(text)")
                #expect(remote.codename == "noble")
                #expect(
                    remote.url.absoluteString.hasSuffix(
                        "/releases/server/releases/noble/release-20240423.1/ubuntu-24.04-server-cloudimg-amd64.img"))
                #expect(remote.checksum == Checksum(.sha256, Fixtures.sha256(image)))
                #expect(remote.size == UInt64(image.count))
            }
            let arm = try await store.resolve(.catalog(.ubuntu, release: "24.04", stream: "released"), arch: .arm64)
            #expect(arm.url.lastPathComponent == "ubuntu-24.04-server-cloudimg-arm64-uefi1.img")
            let interim = try await store.resolve(try ImageReference.parse("ubuntu:questing"), arch: .amd64)
            #expect(interim.reference == "ubuntu:25.10")
        }
        await server.stop()
    }

    @Test("Ubuntu daily stream is read from daily/streams/v1")
    func ubuntuDaily() async throws {
        let server = try await MirrorServer.start()
        try await TemporaryDirectory.with { dir in
            let image = try await Fixtures.qcow2(in: dir.url, megabytes: 1)
            try Fixtures.ubuntuTree(
                on: server, stream: "daily",
                images: [
                    .init(
                        version: "26.04", codename: "resolute", title: "26.04 LTS", aliases: "26.04,r,resolute,devel",
                        arch: "amd64", serials: ["20261120", "20261124"], items: ["disk1.img"])
                ],
                image: image)
            let store = try Fixtures.store(dir, server: server)
            let remote = try await store.resolve(try ImageReference.parse("ubuntu:daily:26.04"), arch: .amd64)
            #expect(remote.reference == "ubuntu:daily:26.04")
            #expect(remote.version == "20261124")
            #expect(remote.url.absoluteString.contains("/daily/server/resolute/20261124/"))
        }
        await server.stop()
    }

    @Test("Ubuntu: an unknown release lists the known ones; a missing arch names the ones there are")
    func ubuntuUnknown() async throws {
        let server = try await MirrorServer.start()
        try await TemporaryDirectory.with { dir in
            try Fixtures.ubuntuTree(on: server, images: Fixtures.standardUbuntu, image: Data("x".utf8))
            let store = try Fixtures.store(dir, server: server)
            let unknown = await #expect(throws: NimbusError.self) {
                try await store.resolve(.catalog(.ubuntu, release: "18.10", stream: "released"), arch: .amd64)
            }
            #expect(unknown?.code == .notFound)
            #expect(
                unknown?.message == "Ubuntu release \"18.10\" is not in the released catalog: use ubuntu: with one of "
                    + "22.04 (jammy), 24.04 (noble), 25.10 (questing)")
            let arch = await #expect(throws: NimbusError.self) {
                try await store.resolve(.catalog(.ubuntu, release: "jammy", stream: "released"), arch: .arm64)
            }
            #expect(
                arch?.message
                    == "Ubuntu jammy has no arm64 image in the released catalog (it has: amd64): pick another --arch")
        }
        await server.stop()
    }

    @Test("Ubuntu: products with a missing sha256, path or size, and non-JSON metadata, are malformed")
    func ubuntuMalformed() async throws {
        for field in ["sha256", "path", "size"] {
            let server = try await MirrorServer.start()
            try await TemporaryDirectory.with { dir in
                try Fixtures.ubuntuTree(on: server, images: Fixtures.standardUbuntu, image: Data("x".utf8)) { catalog in
                    var products = catalog["products"] as? [String: Any] ?? [:]
                    var product = products["com.ubuntu.cloud:server:24.04:amd64"] as? [String: Any] ?? [:]
                    var versions = product["versions"] as? [String: Any] ?? [:]
                    var version = versions["20240423.1"] as? [String: Any] ?? [:]
                    var items = version["items"] as? [String: Any] ?? [:]
                    var disk = items["disk1.img"] as? [String: Any] ?? [:]
                    disk[field] = nil
                    items["disk1.img"] = disk
                    version["items"] = items
                    versions["20240423.1"] = version
                    product["versions"] = versions
                    products["com.ubuntu.cloud:server:24.04:amd64"] = product
                    catalog["products"] = products
                }
                let store = try Fixtures.store(dir, server: server)
                let error = await #expect(throws: NimbusError.self) {
                    try await store.resolve(.catalog(.ubuntu, release: "24.04", stream: "released"), arch: .amd64)
                }
                #expect(error?.code == .integrity)
                #expect(
                    error?.message.contains("malformed metadata: product com.ubuntu.cloud:server:24.04:amd64") == true)
                #expect(
                    error?.message.contains("has no \(field == "sha256" ? "valid sha256" : field)") == true, "\(field)")
            }
            await server.stop()
        }
        let server = try await MirrorServer.start()
        try await TemporaryDirectory.with { dir in
            server.put("releases/streams/v1/index.json", "<html>captive portal</html>")
            let store = try Fixtures.store(dir, server: server)
            let error = await #expect(throws: NimbusError.self) {
                try await store.resolve(.catalog(.ubuntu, release: nil, stream: "released"), arch: .amd64)
            }
            #expect(error?.message.contains("is not valid simplestreams JSON") == true)
            server.put("releases/streams/v1/index.json", "{\"format\": \"index:1.0\", \"index\": {}}")
            let store2 = try Fixtures.store(dir, server: server, refresh: true)
            let empty = await #expect(throws: NimbusError.self) {
                try await store2.resolve(.catalog(.ubuntu, release: nil, stream: "released"), arch: .amd64)
            }
            #expect(empty?.message.contains("has no image-downloads entry") == true)
        }
        await server.stop()
    }

    /// Debian's build record beside an image in `latest/`, as cloud.debian.org publishes it.
    static func debianBuildRecord(_ serial: String) -> String {
        """
        {"apiVersion": "v1", "kind": "List", "items": [
          {"apiVersion": "cloud.debian.org/v1alpha1", "kind": "Upload", "metadata": {"labels": {"cloud.debian.org/version": "ignored"}}},
          {"apiVersion": "cloud.debian.org/v1alpha1", "kind": "Build",
           "metadata": {"labels": {"cloud.debian.org/version": "\(serial)", "debian.org/release": "bookworm"}}}]}
        """
    }

    @Test(
        "Debian: the serial comes from latest/'s build record; a newer build shows as an update after a refresh, and offline resolving asks the mirror nothing"
    )
    func debianSerialsAndUpdates() async throws {
        let server = try await MirrorServer.start()
        try await TemporaryDirectory.with { dir in
            let first = try await Fixtures.qcow2(in: dir.url, megabytes: 1)
            func publish(_ image: Data, serial: String?) {
                server.put("debian/bookworm/latest/debian-12-genericcloud-amd64.qcow2", image)
                server.put(
                    "debian/bookworm/latest/SHA512SUMS",
                    "\(Fixtures.sha512(image))  debian-12-genericcloud-amd64.qcow2\n")
                if let serial {
                    server.put(
                        "debian/bookworm/latest/debian-12-genericcloud-amd64.json", Self.debianBuildRecord(serial))
                } else {
                    server.remove("debian/bookworm/latest/debian-12-genericcloud-amd64.json")
                }
            }
            // A mirror without build records still resolves, as `latest`.
            publish(first, serial: nil)
            #expect(
                try await Fixtures.store(dir, server: server).resolve(
                    .catalog(.debian, release: "12", stream: nil), arch: .amd64
                ).version == "latest")

            publish(first, serial: "20260110-0001")
            let store = try Fixtures.store(dir, server: server, refresh: true)
            let cached = try await store.pull(.catalog(.debian, release: "12", stream: nil), arch: .amd64)
            #expect(cached.version == "20260110-0001")
            #expect(
                await store.update(of: cached)
                    == ImageUpdate(
                        reference: "debian:12", current: "20260110-0001", newest: "20260110-0001", available: false))

            // A new build upstream: offline, the cached metadata still names the old one, and no request is made.
            publish(first + Data(repeating: 0, count: 512), serial: "20260210-0002")
            let offline = try Fixtures.store(dir, server: server, metadataMaxAge: 0, offline: true)
            let before = server.requests("debian/bookworm/latest/SHA512SUMS").count
            #expect(await offline.update(of: cached)?.available == false)
            #expect(server.requests("debian/bookworm/latest/SHA512SUMS").count == before)
            // `image refresh` fetches it; from then on offline resolving knows the newer build.
            let refreshed = try await store.refreshUpdates()
            #expect(
                refreshed == [
                    ImageUpdate(
                        reference: "debian:12", current: "20260110-0001", newest: "20260210-0002", available: true)
                ])
            #expect(await offline.update(of: cached)?.newest == "20260210-0002")
            // An image from a file has no catalog, so no update.
            #expect(
                ImageStore.catalogReference(
                    of: CachedImage(
                        sha256: "x", path: "/x", format: .qcow2, virtualSize: 1, size: 1,
                        references: ["file:///x.qcow2"],
                        name: nil, distribution: nil, release: nil, codename: nil, version: nil, arch: nil,
                        source: "/x",
                        sha512: nil, sourceSHA256: nil, pulledAt: Date(), importedFrom: nil)) == nil)
        }
        await server.stop()
    }

    /// A metadata cache that was never filled answers nothing offline.
    @Test("offline, a catalog with no cached metadata resolves nothing, and no request is made")
    func offlineWithoutCache() async throws {
        let server = try await MirrorServer.start()
        try await TemporaryDirectory.with { dir in
            let offline = try Fixtures.store(dir, server: server, offline: true)
            let error = await #expect(throws: NimbusError.self) {
                try await offline.resolve(.catalog(.debian, release: "12", stream: nil), arch: .amd64)
            }
            #expect(error?.code == .notFound)
            #expect(server.requests("debian/bookworm/latest/SHA512SUMS").isEmpty)
        }
        await server.stop()
    }

    @Test("Debian: <codename>/latest/SHA512SUMS names the genericcloud qcow2; the pull checks its sha512")
    func debian() async throws {
        let server = try await MirrorServer.start()
        try await TemporaryDirectory.with { dir in
            let image = try await Fixtures.qcow2(in: dir.url, megabytes: 1)
            server.put("debian/bookworm/latest/debian-12-genericcloud-amd64.qcow2", image)
            server.put(
                "debian/bookworm/latest/SHA512SUMS",
                """
                \(Fixtures.sha512(Data("other".utf8)))  debian-12-generic-amd64.qcow2
                \(Fixtures.sha512(image))  debian-12-genericcloud-amd64.qcow2
                \(Fixtures.sha512(Data("raw".utf8)))  debian-12-genericcloud-amd64.raw

                """)
            let store = try Fixtures.store(dir, server: server)
            let remote = try await store.resolve(try ImageReference.parse("debian:bookworm"), arch: .amd64)
            #expect(remote.checksum == Checksum(.sha512, Fixtures.sha512(image)))
            #expect(remote.reference == "debian:12")
            let cached = try await store.pull(.catalog(.debian, release: "12", stream: nil), arch: .amd64)
            #expect(cached.sha256 == Fixtures.sha256(image))
            #expect(cached.sha512 == Fixtures.sha512(image))
            #expect(cached.format == .qcow2)
            #expect(cached.codename == "bookworm")
            // The second pull matches the cache through the sha512 and downloads nothing.
            _ = try await store.pull(.catalog(.debian, release: "12", stream: nil), arch: .amd64)
            #expect(server.requests("debian/bookworm/latest/debian-12-genericcloud-amd64.qcow2").count == 1)
            let arm = await #expect(throws: NimbusError.self) {
                try await store.resolve(.catalog(.debian, release: "12", stream: nil), arch: .arm64)
            }
            #expect(arm?.message.contains("has no arm64 genericcloud image") == true)
            // A tampered image fails the sha512 check and leaves nothing behind.
            let published = image + Data([1])
            server.put("debian/trixie/latest/debian-13-genericcloud-amd64.qcow2", image + Data([2]))
            server.put(
                "debian/trixie/latest/SHA512SUMS", "\(Fixtures.sha512(published))  debian-13-genericcloud-amd64.qcow2\n"
            )
            let mismatch = await #expect(throws: NimbusError.self) {
                try await store.pull(.catalog(.debian, release: "13", stream: nil), arch: .amd64)
            }
            #expect(
                mismatch?.message.contains(
                    "expected sha512 \(Fixtures.sha512(published)), got \(Fixtures.sha512(image + Data([2])))") == true)
            #expect(try await store.list().count == 1)
            #expect(
                try FileManager.default.contentsOfDirectory(atPath: dir.paths.images.appending(path: ".partial").path)
                    .isEmpty)
        }
        await server.stop()
    }

    static func coreOSStream(location: String, sha256: String?, uncompressed: String?) throws -> Data {
        var disk: [String: Any] = ["location": location, "signature": location + ".sig"]
        disk["sha256"] = sha256
        disk["uncompressed-sha256"] = uncompressed
        let stream: [String: Any] = [
            "stream": "stable", "metadata": ["last-modified": "2024-04-29T19:29:58Z"],
            "architectures": [
                "x86_64": [
                    "artifacts": [
                        "metal": [
                            "release": "40.20240416.3.1",
                            "formats": [
                                "raw.xz": [
                                    "disk": [
                                        "location": "https://x/y.raw.xz", "sha256": String(repeating: "0", count: 64),
                                    ]
                                ]
                            ],
                        ],
                        "qemu": ["release": "40.20240416.3.1", "formats": ["qcow2.xz": ["disk": disk]]],
                    ],
                    "images": ["aws": ["regions": [:]]],
                ]
            ],
        ]
        return try JSONSerialization.data(withJSONObject: stream, options: [.sortedKeys])
    }

    @Test("Fedora CoreOS: stream JSON → qemu qcow2.xz, compressed sha256 checked, decompressed with xz into the cache")
    func coreOS() async throws {
        let server = try await MirrorServer.start()
        try await TemporaryDirectory.with { dir in
            let image = try await Fixtures.qcow2(in: dir.url, megabytes: 1)
            let plain = dir.url.appending(path: "fcos.qcow2")
            try image.write(to: plain)
            try await ProgramRunner.run("xz", ["-k", "-0", plain.path])
            let compressed = try Data(contentsOf: dir.url.appending(path: "fcos.qcow2.xz"))
            let path =
                "prod/streams/stable/builds/40.20240416.3.1/x86_64/fedora-coreos-40.20240416.3.1-qemu.x86_64.qcow2.xz"
            server.put("fcos/" + path, compressed)
            // Locations name the official host; the configured mirror serves the same path.
            server.put(
                "fcos/streams/stable.json",
                try Self.coreOSStream(
                    location: "https://builds.coreos.fedoraproject.org/" + path, sha256: Fixtures.sha256(compressed),
                    uncompressed: Fixtures.sha256(image)))
            let store = try Fixtures.store(dir, server: server)
            let cached = try await store.pull(try ImageReference.parse("fedora-coreos"), arch: .amd64)
            #expect(cached.sha256 == Fixtures.sha256(image))
            #expect(cached.sourceSHA256 == Fixtures.sha256(compressed))
            #expect(cached.version == "40.20240416.3.1")
            #expect(cached.format == .qcow2)
            #expect(try Data(contentsOf: cached.url) == image)
            #expect(server.requests("fcos/" + path).count == 1)
            let arm = await #expect(throws: NimbusError.self) {
                try await store.resolve(.catalog(.fedoraCoreOS, release: "stable", stream: nil), arch: .arm64)
            }
            #expect(arm?.message.contains("has no aarch64 images (it has: x86_64)") == true)

            // Missing fields are malformed metadata, named by their path in the JSON.
            server.put(
                "fcos/streams/testing.json",
                try Self.coreOSStream(
                    location: "https://builds.coreos.fedoraproject.org/" + path, sha256: nil, uncompressed: nil))
            let malformed = await #expect(throws: NimbusError.self) {
                try await store.resolve(.catalog(.fedoraCoreOS, release: "testing", stream: nil), arch: .amd64)
            }
            #expect(malformed?.message.contains("formats[\"qcow2.xz\"].disk.sha256 is missing") == true)
            // A decompressed image whose sha256 differs from uncompressed-sha256 is refused.
            server.put(
                "fcos/streams/next.json",
                try Self.coreOSStream(
                    location: "https://builds.coreos.fedoraproject.org/" + path, sha256: Fixtures.sha256(compressed),
                    uncompressed: String(repeating: "a", count: 64)))
            try await store.remove("fedora-coreos")
            let after = await #expect(throws: NimbusError.self) {
                try await store.pull(.catalog(.fedoraCoreOS, release: "next", stream: nil), arch: .amd64)
            }
            #expect(after?.message.contains("after decompression (expected sha256 aaaa") == true)
            #expect(try await store.list().isEmpty)
        }
        await server.stop()
    }

    @Test("list --remote: each catalog's newest images with whether they are cached; a failing catalog is a warning")
    func available() async throws {
        let server = try await MirrorServer.start()
        try await TemporaryDirectory.with { dir in
            let image = try await Fixtures.qcow2(in: dir.url, megabytes: 1)
            try Fixtures.ubuntuTree(on: server, images: Fixtures.standardUbuntu, image: image)
            server.put(
                "debian/bookworm/latest/SHA512SUMS", "\(Fixtures.sha512(image))  debian-12-genericcloud-amd64.qcow2\n")
            server.put("debian/bookworm/latest/debian-12-genericcloud-amd64.qcow2", image)
            let log = WarningLog()
            let store = try Fixtures.store(dir, server: server, warnings: log)
            _ = try await store.pull(.catalog(.debian, release: "12", stream: nil), arch: .amd64)
            let available = await store.available(arch: .amd64)
            #expect(available.map(\.image.reference) == ["ubuntu:22.04", "ubuntu:24.04", "ubuntu:25.10", "debian:12"])
            // Every test image has the same bytes, so the Ubuntu ones count as cached too.
            #expect(available.allSatisfy { $0.cached })
            // Debian 13 and 11 and the three CoreOS streams are missing from this mirror: one warning each.
            let warnings = log.all
            let debianWarnings = warnings.filter { line in line.hasPrefix("warning: debian:") }.count
            let coreOSWarnings = warnings.filter { line in line.hasPrefix("warning: fedora-coreos:") }.count
            #expect(debianWarnings == 2)
            #expect(coreOSWarnings == 3)
        }
        await server.stop()
    }
}
