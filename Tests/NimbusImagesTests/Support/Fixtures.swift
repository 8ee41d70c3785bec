import Crypto
import Foundation
import NimbusCore
import NimbusTestSupport
import Synchronization

@testable import NimbusImages

/// Real images made by qemu-img, and mirror trees in the catalogs' published formats.
enum Fixtures {
    /// A qcow2 image of `megabytes` MiB of random data (so that it does not compress away), made by
    /// `qemu-img convert` from a raw file.
    static func qcow2(in folder: URL, name: String = "image", megabytes: Int = 3) async throws -> Data {
        let raw = folder.appending(path: "\(name).raw")
        var bytes = [UInt8](repeating: 0, count: megabytes << 20)
        var generator = SystemRandomNumberGenerator()
        for index in stride(from: 0, to: bytes.count, by: 8) {
            withUnsafeBytes(of: generator.next() as UInt64) { random in
                for offset in 0..<8 { bytes[index + offset] = random[offset] }
            }
        }
        try Data(bytes).write(to: raw)
        let qcow2 = folder.appending(path: "\(name).qcow2")
        try await ProgramRunner.run("qemu-img", ["convert", "-q", "-f", "raw", "-O", "qcow2", raw.path, qcow2.path])
        try FileManager.default.removeItem(at: raw)
        return try Data(contentsOf: qcow2)
    }

    static func sha256(_ data: Data) -> String {
        SHA256.hash(data: data).map { String(format: "%02x", $0) }.joined()
    }

    static func sha512(_ data: Data) -> String {
        SHA512.hash(data: data).map { String(format: "%02x", $0) }.joined()
    }

    struct UbuntuImage {
        var version: String
        var codename: String
        var title: String
        var aliases: String
        var arch: String
        var serials: [String]
        var items: [String]
        var supported = true
    }

    /// A simplestreams tree: `<stream>/streams/v1/index.json` and the products file, as
    /// cloud-images.ubuntu.com publishes them, or under `root` (ending in `/`, or `""`: the server's top, as a
    /// mirror of one stream). Every item's bytes are `image`. Returns the products file's path, for tests that
    /// tamper with it.
    @discardableResult
    static func ubuntuTree(
        on server: MirrorServer, stream: String = "released", root: String? = nil, images: [UbuntuImage],
        image: Data, mutate: (inout [String: Any]) -> Void = { _ in }
    ) throws -> String {
        let contentID = "com.ubuntu.cloud:\(stream):download"
        let root = root ?? (stream == "released" ? "releases/" : "\(stream)/")
        var products: [String: Any] = [:]
        for product in images {
            var versions: [String: Any] = [:]
            for serial in product.serials {
                var items: [String: Any] = [:]
                for item in product.items {
                    let folder =
                        stream == "daily"
                        ? "server/\(product.codename)/\(serial)"
                        : "server/releases/\(product.codename)/release-\(serial)"
                    let suffix = item == "uefi1.img" ? "-uefi1" : ""
                    let path = "\(folder)/ubuntu-\(product.version)-server-cloudimg-\(product.arch)\(suffix).img"
                    server.put("\(root)\(path)", image)
                    items[item] = [
                        "ftype": item, "path": path, "sha256": sha256(image), "size": image.count,
                        "md5": String(repeating: "0", count: 32),
                    ]
                }
                items["manifest"] = [
                    "ftype": "manifest", "path": "server/x.manifest", "sha256": sha256(Data()), "size": 0,
                ]
                versions[serial] = [
                    "items": items, "label": "release",
                    "pubname": "ubuntu-\(product.codename)-\(product.version)-\(product.arch)-server-\(serial)",
                ]
            }
            let key =
                (stream == "daily" ? "com.ubuntu.cloud.daily" : "com.ubuntu.cloud")
                + ":server:\(product.version):\(product.arch)"
            products[key] = [
                "aliases": product.aliases, "arch": product.arch, "os": "ubuntu", "release": product.codename,
                "release_codename": product.codename.capitalized, "release_title": product.title,
                "support_eol": "2029-05-31", "supported": product.supported, "version": product.version,
                "versions": versions,
            ]
        }
        var catalog: [String: Any] = [
            "content_id": contentID, "creator": "climdb-download-streams-export", "datatype": "image-downloads",
            "format": "products:1.0", "license": "http://www.canonical.com/intellectual-property-policy",
            "products": products, "updated": "Tue, 23 Apr 2024 10:00:00 +0000",
        ]
        mutate(&catalog)
        let productsPath = "streams/v1/\(contentID).json"
        let index: [String: Any] = [
            "format": "index:1.0", "updated": "Tue, 23 Apr 2024 10:00:00 +0000",
            "index": [
                contentID: [
                    "clouds": [], "datatype": "image-downloads", "format": "products:1.0", "path": productsPath,
                    "products": Array(products.keys).sorted(), "updated": "Tue, 23 Apr 2024 10:00:00 +0000",
                ],
                "com.ubuntu.cloud:\(stream):aws": [
                    "datatype": "image-ids", "format": "products:1.0",
                    "path": "streams/v1/com.ubuntu.cloud:\(stream):aws.json",
                ],
            ],
        ]
        server.put(
            "\(root)streams/v1/index.json",
            try JSONSerialization.data(withJSONObject: index, options: [.sortedKeys, .prettyPrinted]))
        server.put(
            "\(root)\(productsPath)",
            try JSONSerialization.data(withJSONObject: catalog, options: [.sortedKeys, .prettyPrinted]))
        return "\(root)\(productsPath)"
    }

    static let standardUbuntu: [UbuntuImage] = [
        UbuntuImage(
            version: "22.04", codename: "jammy", title: "22.04 LTS", aliases: "22.04,j,jammy", arch: "amd64",
            serials: ["20240301"], items: ["disk1.img"]),
        UbuntuImage(
            version: "24.04", codename: "noble", title: "24.04 LTS", aliases: "24.04,default,lts,n,noble",
            arch: "amd64", serials: ["20240423", "20240423.1", "20240325"], items: ["disk1.img"]),
        UbuntuImage(
            version: "24.04", codename: "noble", title: "24.04 LTS", aliases: "24.04,default,lts,n,noble",
            arch: "arm64", serials: ["20240423"], items: ["disk1.img", "uefi1.img"]),
        UbuntuImage(
            version: "25.10", codename: "questing", title: "25.10", aliases: "25.10,q,questing", arch: "amd64",
            serials: ["20251010"], items: ["disk1.img"]),
    ]

    /// A store over a fresh NIMBUS_HOME, reading every catalog from `server`, retrying quickly.
    static func store(
        _ dir: TemporaryDirectory, server: MirrorServer?, keyring: ImageStore.Keyring = .none, refresh: Bool = false,
        attempts: Int = 3, warnings: WarningLog? = nil, metadataMaxAge: TimeInterval = 3600, offline: Bool = false,
        disks: @escaping @Sendable () -> [(owner: String, file: URL)] = { [] }
    ) throws -> ImageStore {
        let base = server?.base ?? URL(string: "http://127.0.0.1:1/")!
        var options = ImageStore.Options()
        options.keyring = keyring
        options.refresh = refresh
        options.metadataMaxAge = metadataMaxAge
        options.offline = offline
        options.retry = RetryPolicy(attempts: attempts, initialDelay: .milliseconds(10))
        let log = warnings
        options.warn = { message in log?.append(message) }
        options.disks = disks
        return try ImageStore(
            paths: dir.paths,
            mirrors: Mirrors(
                ubuntu: base, debian: base.appending(path: "debian/"), fedoraCoreOS: base.appending(path: "fcos/")),
            options: options, environment: [:])
    }
}

/// Warnings a store printed, for assertions.
final class WarningLog: Sendable {
    private let lines = Synchronization.Mutex<[String]>([])
    func append(_ line: String) { lines.withLock { $0.append(line) } }
    var all: [String] { lines.withLock { $0 } }
}
