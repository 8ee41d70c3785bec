// fuzz-catalogs: the image catalog parsers of NimbusImages on arbitrary metadata.
//
// Byte 0 (modulo 8) picks what the rest of the input is; the catalogs are resolved for real, from a file://
// mirror in a temporary folder (MetadataCache reads file:// URLs directly, nothing is cached or fetched):
//   0  Ubuntu simplestreams products file (behind a fixed index): resolve lts, 24.04, noble; list; digest
//   1  Ubuntu simplestreams index.json of a one-stream mirror (a fixed products file beside it): resolve 24.04
//   2  a Debian build record: DebianCloud.serial(inBuildRecord:)
//   3  a Debian SHA512SUMS of a mirror of images/cloud/ (bookworm/latest/): names(in:), resolve 12
//   4  a Debian SHA512SUMS of a one-codename mirror (latest/): names(in:), resolve 12 (checkHeldRelease)
//   5  a Fedora CoreOS stream file (streams/stable.json): resolve stable for x86_64 and aarch64
//   6  Checksum(parsing:) and SimpleStreams.streamName(ofContentID:) on the text
//   7  a Debian build record beside a valid SHA512SUMS: resolve 12 (the record read as resolve reads it)
// Throwing (NimbusError) is fine; a trap is a bug. A resolved image must carry a valid checksum.

import Foundation
import FuzzDriver

@testable import NimbusCore
@testable import NimbusImages

/// The temporary mirror and metadata folder, made once per process and emptied before each input.
let root: URL = {
    let url = FileManager.default.temporaryDirectory.appending(path: "nimbus-fuzz-catalogs-\(getpid())/")
    try? FileManager.default.removeItem(at: url)
    return url
}()

func write(_ data: Data, _ path: String) {
    let url = root.appending(path: "mirror/" + path)
    do {
        try FileManager.default.createDirectory(at: url.deletingLastPathComponent(), withIntermediateDirectories: true)
        try data.write(to: url)
    } catch {
        fatalError("cannot write \(url.path): \(error)")
    }
}

/// Runs `body` to completion from this synchronous callback.
func block(_ body: @escaping @Sendable () async -> Void) {
    let done = DispatchSemaphore(value: 0)
    Task {
        await body()
        done.signal()
    }
    done.wait()
}

func check(_ image: RemoteImage) {
    guard let checksum = image.checksum else { fatalError("resolved \(image.reference) without a checksum") }
    guard (try? Checksum(parsing: checksum.description)) == checksum else {
        fatalError("resolved \(image.reference) with an invalid checksum \(checksum)")
    }
}

let sha256 = String(repeating: "ab", count: 32)
let sha512 = String(repeating: "cd", count: 64)
let fixedIndex = Data(
    """
    {"format": "index:1.0", "index": {"com.ubuntu.cloud:released:download": {"datatype": "image-downloads",
     "format": "products:1.0", "path": "streams/v1/com.ubuntu.cloud:released:download.json"}}}
    """.utf8)
let fixedProducts = Data(
    """
    {"content_id": "com.ubuntu.cloud:released:download", "datatype": "image-downloads", "products": {
     "com.ubuntu.cloud:server:24.04:amd64": {"aliases": "24.04,default,lts,n,noble", "arch": "amd64", "os": "ubuntu",
      "release": "noble", "release_title": "24.04 LTS", "supported": true, "version": "24.04", "versions": {
       "20240423": {"items": {"disk1.img": {"ftype": "disk1.img", "path": "server/releases/noble/release-20240423/x.img",
        "size": 1, "sha256": "\(sha256)"}}}}}}}
    """.utf8)

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    guard size >= 1 else { return 0 }
    let input = Data(bytes: data + 1, count: size - 1)
    let text = String(decoding: input, as: UTF8.self)
    try? FileManager.default.removeItem(at: root)
    let mirror = root.appending(path: "mirror/")
    let metadata = MetadataCache(
        folder: root.appending(path: "metadata/"), maxAge: 3600, refresh: false, policy: RetryPolicy(), warn: { _ in })
    switch data[0] % 8 {
    case 0:
        write(fixedIndex, "releases/streams/v1/index.json")
        write(input, "releases/streams/v1/com.ubuntu.cloud:released:download.json")
        if let products = try? JSONDecoder().decode(SimpleStreams.Products.self, from: input) {
            _ = try? JSONEncoder().encode(SimpleStreams.digest(products))
        }
        block {
            let streams = SimpleStreams(mirror: mirror, stream: "released", metadata: metadata, keyring: nil)
            for release in [nil, "24.04", "noble"] {
                if let image = try? await streams.resolve(release: release, arch: .amd64) { check(image) }
            }
            for image in (try? await streams.list(arch: .arm64)) ?? [] { check(image) }
        }
    case 1:
        write(input, "streams/v1/index.json")
        write(fixedProducts, "streams/v1/com.ubuntu.cloud:released:download.json")
        block {
            let streams = SimpleStreams(mirror: mirror, stream: "released", metadata: metadata, keyring: nil)
            if let image = try? await streams.resolve(release: "24.04", arch: .amd64) { check(image) }
        }
    case 2:
        if let serial = DebianCloud.serial(inBuildRecord: input), serial.isEmpty { fatalError("empty serial") }
    case 3, 4:
        _ = DebianCloud.names(in: text)
        write(input, data[0] % 8 == 3 ? "bookworm/latest/SHA512SUMS" : "latest/SHA512SUMS")
        block {
            if let image = try? await DebianCloud(mirror: mirror, metadata: metadata).resolve(
                release: "12", arch: .amd64)
            {
                check(image)
            }
        }
    case 5:
        write(input, "streams/stable.json")
        block {
            for arch in Architecture.allCases {
                if let image = try? await FedoraCoreOS(mirror: mirror, metadata: metadata).resolve(
                    stream: "stable", arch: arch)
                {
                    check(image)
                }
            }
        }
    case 6:
        if let checksum = try? Checksum(parsing: text) {
            guard checksum.hex.count == checksum.algorithm.hexLength else { fatalError("checksum of the wrong length") }
        }
        _ = SimpleStreams.streamName(ofContentID: text)
    default:
        write(Data("\(sha512)  debian-12-genericcloud-amd64.qcow2\n".utf8), "bookworm/latest/SHA512SUMS")
        write(input, "bookworm/latest/debian-12-genericcloud-amd64.json")
        block {
            if let image = try? await DebianCloud(mirror: mirror, metadata: metadata).resolve(
                release: "12", arch: .amd64)
            {
                check(image)
            }
        }
    }
    return 0
}

// MARK: - Entry point

/// What SwiftPM's debug link calls for `main`: libFuzzer's driver, with this target.
@_cdecl("fuzz_catalogs_main")
public func fuzzerMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    runLibFuzzer(argc, argv, fuzz)
}
