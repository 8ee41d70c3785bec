import Foundation
import NimbusCore
import NimbusTestSupport
import Testing

@testable import NimbusImages

/// Pulls from a loopback mirror with faults injected by the server itself.
@Suite("Verified downloads", .requires(.programs("qemu-img")))
struct DownloadTests {
    static let imagePath = "releases/server/releases/noble/release-20240423.1/ubuntu-24.04-server-cloudimg-amd64.img"
    static let noble = ImageReference.catalog(.ubuntu, release: "24.04", stream: "released")

    /// A mirror with the standard Ubuntu tree around a 3 MiB qcow2.
    func withMirror(_ body: (MirrorServer, TemporaryDirectory, Data) async throws -> Void) async throws {
        let server = try await MirrorServer.start()
        do {
            try await TemporaryDirectory.with { dir in
                let image = try await Fixtures.qcow2(in: dir.url)
                try Fixtures.ubuntuTree(on: server, images: Fixtures.standardUbuntu, image: image)
                try await body(server, dir, image)
            }
        } catch {
            await server.stop()
            throw error
        }
        await server.stop()
    }

    func cacheFiles(_ dir: TemporaryDirectory) -> [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: dir.paths.images.path)) ?? []).filter {
            !$0.hasPrefix(".")
        }.sorted()
    }

    func partialFiles(_ dir: TemporaryDirectory) -> [String] {
        let folder = dir.paths.images.appending(path: ".partial")
        return ((try? FileManager.default.contentsOfDirectory(atPath: folder.path)) ?? []).filter {
            !$0.hasSuffix(".source") && !$0.hasSuffix(".etag")
        }
    }

    @Test("a pull streams, verifies and caches <sha256>.img + .json; the next pull is a cache hit")
    func pullAndCacheHit() async throws {
        try await withMirror { server, dir, image in
            let store = try Fixtures.store(dir, server: server)
            let cached = try await store.pull(Self.noble, arch: .amd64, as: "ubuntu")
            let sha = Fixtures.sha256(image)
            #expect(cached.sha256 == sha)
            #expect(cached.path == dir.paths.images.appending(path: "\(sha).img").path)
            #expect(cached.format == .qcow2)
            #expect(cached.virtualSize == 3 << 20)
            #expect(cached.version == "20240423.1")
            #expect(cached.references == ["ubuntu:24.04", "ubuntu"])
            #expect(cacheFiles(dir) == ["\(sha).img", "\(sha).json"])
            #expect(try Data(contentsOf: cached.url) == image)
            let again = try await store.pull(Self.noble, arch: .amd64)
            #expect(again.sha256 == sha)
            #expect(server.requests(Self.imagePath).count == 1)
            #expect(try await store.info("ubuntu").sha256 == sha)
            #expect(try await store.info(String(sha.prefix(8))).sha256 == sha)
        }
    }

    @Test("a checksum mismatch removes the download and names both hashes")
    func checksumMismatch() async throws {
        try await withMirror { server, dir, image in
            var tampered = image
            tampered[tampered.count - 1] ^= 0xFF
            server.put(Self.imagePath, tampered)
            let store = try Fixtures.store(dir, server: server)
            let error = await #expect(throws: NimbusError.self) { try await store.pull(Self.noble, arch: .amd64) }
            #expect(error?.code == .integrity)
            #expect(
                error?.message
                    == "image checksum mismatch for ubuntu:24.04 (expected sha256 \(Fixtures.sha256(image)), got "
                    + "\(Fixtures.sha256(tampered))): the partial download was removed; run the command again")
            #expect(cacheFiles(dir).isEmpty)
            #expect(partialFiles(dir).isEmpty)
        }
    }

    @Test("a file whose size differs from the catalog's is refused before its body is kept")
    func sizeMismatch() async throws {
        try await withMirror { server, dir, image in
            server.put(Self.imagePath, image + Data(repeating: 0, count: 512))
            let store = try Fixtures.store(dir, server: server)
            let error = await #expect(throws: NimbusError.self) { try await store.pull(Self.noble, arch: .amd64) }
            #expect(error?.code == .integrity)
            #expect(
                error?.message.contains("size mismatch for ubuntu:24.04: the catalog says \(image.count) bytes") == true
            )
            #expect(error?.message.contains("has \(image.count + 512)") == true)
            #expect(cacheFiles(dir).isEmpty)
            #expect(partialFiles(dir).isEmpty)
        }
    }

    @Test("a connection dropped half way is resumed with a Range request and the hash covers every byte")
    func resumeAfterDrop() async throws {
        try await withMirror { server, dir, image in
            server.inject(.dropAfter(image.count / 2), at: Self.imagePath)
            let store = try Fixtures.store(dir, server: server)
            let cached = try await store.pull(Self.noble, arch: .amd64)
            #expect(cached.sha256 == Fixtures.sha256(image))
            let requests = server.requests(Self.imagePath)
            #expect(requests.count == 2)
            #expect(requests.first?.range == nil)
            let range = try #require(requests.last?.range)
            let offset = try #require(Int(range.dropFirst("bytes=".count).dropLast()))
            #expect(offset > 0 && offset <= image.count / 2)
        }
    }

    @Test("a body truncated on every try fails after the retries, keeps the partial, and the next run resumes it")
    func truncatedThenResumedByNextRun() async throws {
        try await withMirror { server, dir, image in
            server.inject(.dropAfter(1 << 20), at: Self.imagePath, times: 3)
            let store = try Fixtures.store(dir, server: server, attempts: 3)
            let error = await #expect(throws: NimbusError.self) { try await store.pull(Self.noble, arch: .amd64) }
            #expect(error?.code == .network)
            #expect(error?.message.contains("was cut short at") == true)
            #expect(error?.message.contains("run the command again to resume") == true)
            #expect(cacheFiles(dir).isEmpty)
            #expect(partialFiles(dir).count == 1)
            // A new store (a new process) resumes from the bytes on disk.
            let next = try Fixtures.store(dir, server: server)
            let cached = try await next.pull(Self.noble, arch: .amd64)
            #expect(cached.sha256 == Fixtures.sha256(image))
            #expect(server.requests(Self.imagePath).last?.range?.hasPrefix("bytes=") == true)
            #expect(server.requests(Self.imagePath).last?.range != "bytes=0-")
            #expect(partialFiles(dir).isEmpty)
        }
    }

    @Test("a partial download of a file that changed on the mirror since is not resumed (If-Range)")
    func ifRange() async throws {
        try await withMirror { server, dir, image in
            server.put("custom/moving.img", image)
            let url = server.url("custom/moving.img").absoluteString
            server.inject(.dropAfter(1 << 20), at: "custom/moving.img", times: 2)
            let store = try Fixtures.store(dir, server: server, attempts: 2)
            await #expect(throws: NimbusError.self) { try await store.pull(try ImageReference.parse(url)) }
            #expect(partialFiles(dir).count == 1)
            var replaced = image
            replaced[0] ^= 0xFF
            replaced[replaced.count - 1] ^= 0xFF
            server.put("custom/moving.img", replaced)
            let cached = try await Fixtures.store(dir, server: server).pull(try ImageReference.parse(url))
            #expect(cached.sha256 == Fixtures.sha256(replaced))
            #expect(server.requests("custom/moving.img").last?.range != nil)
            #expect(partialFiles(dir).isEmpty)
        }
    }

    @Test("404 is reported at once without retries")
    func notFound() async throws {
        try await withMirror { server, dir, _ in
            server.remove(Self.imagePath)
            let store = try Fixtures.store(dir, server: server, attempts: 4)
            let error = await #expect(throws: NimbusError.self) { try await store.pull(Self.noble, arch: .amd64) }
            #expect(error?.code == .notFound)
            #expect(error?.message.contains("answered HTTP 404") == true)
            #expect(server.requests(Self.imagePath).count == 1)
            #expect(partialFiles(dir).isEmpty)
        }
    }

    @Test("500 is retried with backoff, and reported when it persists")
    func serverErrors() async throws {
        try await withMirror { server, dir, image in
            server.inject(.status(500), at: Self.imagePath, times: 2)
            let store = try Fixtures.store(dir, server: server, attempts: 3)
            let cached = try await store.pull(Self.noble, arch: .amd64)
            #expect(cached.sha256 == Fixtures.sha256(image))
            #expect(server.requests(Self.imagePath).count == 3)
            try await store.remove("ubuntu:24.04")
            server.inject(.status(503), at: Self.imagePath, times: 3)
            let error = await #expect(throws: NimbusError.self) { try await store.pull(Self.noble, arch: .amd64) }
            #expect(error?.code == .network)
            #expect(error?.message.contains("answered HTTP 503") == true)
            #expect(server.requests(Self.imagePath).count == 6)
        }
    }

    @Test("two stores pulling the same image at once download it once")
    func concurrentPulls() async throws {
        try await withMirror { server, dir, image in
            let first = try Fixtures.store(dir, server: server)
            let second = try Fixtures.store(dir, server: server)
            async let a = first.pull(Self.noble, arch: .amd64)
            async let b = second.pull(Self.noble, arch: .amd64)
            let (x, y) = try await (a, b)
            #expect(x.sha256 == Fixtures.sha256(image))
            #expect(y.sha256 == x.sha256)
            #expect(server.requests(Self.imagePath).count == 1)
        }
    }

    @Test("an https:// image with --checksum is verified; without one it is cached by URL")
    func urlReference() async throws {
        try await withMirror { server, dir, image in
            server.put("custom/x.img", image)
            let store = try Fixtures.store(dir, server: server)
            let url = server.url("custom/x.img").absoluteString
            let good = try ImageReference.parse(url, checksum: "sha256:\(Fixtures.sha256(image))")
            #expect(try await store.pull(good).sha256 == Fixtures.sha256(image))
            let wrong = try ImageReference.parse(url, checksum: "sha256:" + String(repeating: "0", count: 64))
            let error = await #expect(throws: NimbusError.self) { try await store.pull(wrong) }
            #expect(error?.message.contains("expected sha256 0000") == true)
            server.put("custom/y.img", image)
            let log = WarningLog()
            let unchecked = try Fixtures.store(dir, server: server, warnings: log)
            _ = try await unchecked.pull(try ImageReference.parse(server.url("custom/y.img").absoluteString))
            #expect(log.all.contains { $0.contains("no --checksum given") })
        }
    }

    @Test("catalog metadata is cached with its ETag, revalidated on --refresh (304), and used offline with a warning")
    func metadataCaching() async throws {
        try await withMirror { server, dir, _ in
            let index = "releases/streams/v1/index.json"
            _ = try await Fixtures.store(dir, server: server).resolve(Self.noble, arch: .amd64)
            #expect(server.requests(index).count == 1)
            _ = try await Fixtures.store(dir, server: server).resolve(Self.noble, arch: .amd64)
            #expect(server.requests(index).count == 1, "fresh metadata is not fetched again")
            _ = try await Fixtures.store(dir, server: server, refresh: true).resolve(Self.noble, arch: .amd64)
            #expect(server.requests(index).count == 2)
            #expect(server.requests(index).last?.ifNoneMatch != nil)
            // Metadata older than its maximum age is revalidated the same way, without --refresh.
            _ = try await Fixtures.store(dir, server: server, metadataMaxAge: 0).resolve(Self.noble, arch: .amd64)
            #expect(server.requests(index).count == 3)
            #expect(server.requests(index).last?.ifNoneMatch != nil)
            // The mirror goes away: --refresh falls back to the cached metadata and says so.
            await server.stop()
            let log = WarningLog()
            let offline = try Fixtures.store(dir, server: server, refresh: true, attempts: 2, warnings: log)
            let remote = try await offline.resolve(Self.noble, arch: .amd64)
            #expect(remote.version == "20240423.1")
            #expect(log.all.contains { $0.contains("using the Ubuntu released image index cached") })
        }
    }

    @Test("an unreachable mirror without cached metadata is a network error naming the host")
    func unreachable() async throws {
        try await TemporaryDirectory.with { dir in
            let store = try Fixtures.store(dir, server: nil, attempts: 2)
            let error = await #expect(throws: NimbusError.self) { try await store.pull(Self.noble, arch: .amd64) }
            #expect(error?.code == .network)
            #expect(error?.message.contains("could not reach 127.0.0.1") == true)
            #expect(error?.message.contains("check the network or the mirror setting") == true)
        }
    }
}
