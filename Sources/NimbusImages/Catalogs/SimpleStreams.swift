import Foundation
import NimbusCore

/// Ubuntu's cloud image catalog in the simplestreams format.
///
/// `<stream root>/streams/v1/index.json` lists content files; the one with datatype `image-downloads`
/// (`com.ubuntu.cloud:released:download.json`) holds products (`com.ubuntu.cloud:server:24.04:amd64`),
/// each with `versions` keyed by serial (`20240423`, sorted as strings), each with `items` keyed by file
/// type: `disk1.img` (qcow2), `uefi1.img` on some arches, each with `path` (relative to the stream root),
/// `size` and `sha256`. The signed variant replaces `.json` with `.sjson`: the same JSON in an OpenPGP
/// cleartext signature.
///
/// The stream root is `<mirror>/releases/` or `<mirror>/daily/` on a host root (cloud-images.ubuntu.com and
/// mirrors of all of it), or the mirror itself when it is a mirror of one stream, as `sstream-mirror` writes
/// it: which one is decided by where the index is (`MetadataCache.locate`). A one-stream mirror serves only
/// the stream its index's content id names.
struct SimpleStreams: Sendable {
    struct Index: Decodable {
        struct Entry: Decodable {
            var datatype: String?
            var path: String?
            var format: String?
        }
        var index: [String: Entry]?
        var format: String?
    }

    struct Products: Codable {
        enum CodingKeys: String, CodingKey {
            case contentID = "content_id"
            case datatype, products
        }

        var contentID: String?
        var datatype: String?
        var products: [String: Product]?
    }

    struct Product: Codable {
        enum CodingKeys: String, CodingKey {
            case aliases, arch, os, release, supported, version, versions
            case releaseTitle = "release_title"
        }

        var aliases: String?
        var arch: String?
        var os: String?
        var release: String?
        var releaseTitle: String?
        var supported: Bool?
        var version: String?
        var versions: [String: Version]?
    }

    struct Version: Codable {
        var items: [String: Item]?
    }

    struct Item: Codable {
        var ftype: String?
        var path: String?
        var size: UInt64?
        var sha256: String?
    }

    let mirror: URL
    let stream: String
    let metadata: MetadataCache
    /// The keyring to check `.sjson` against; nil reads the unsigned `.json`.
    let keyring: URL?

    /// The stream's root on a mirror of `layout`: on a host root, `releases/` for the released stream and
    /// `daily/` for daily; a one-stream mirror is its own root.
    func root(_ layout: MirrorLayout) -> URL {
        switch layout {
        case .whole: mirror.appending(path: (stream == "released" ? "releases" : stream) + "/")
        case .part: mirror
        }
    }

    /// The products file of the stream, checked against the keyring when there is one, and the stream root
    /// its paths are relative to.
    func products() async throws(NimbusError) -> (products: Products, root: URL) {
        let suffix = keyring == nil ? "json" : "sjson"
        let located = try await metadata.locate(
            catalog: "ubuntu", mirror: mirror, file: { root($0).appending(path: "streams/v1/index.\(suffix)") },
            fetch: { url throws(NimbusError) in try await fetch(url, what: "Ubuntu \(stream) image index") })
        guard let located else { throw await indexMissing(suffix: suffix) }
        let streamRoot = root(located.layout)
        let indexURL = located.url
        let index: Index = try decode(Index.self, located.data, "Ubuntu image index \(indexURL.absoluteString)")
        let preferred = "com.ubuntu.cloud:\(stream):download"
        let entries = index.index ?? [:]
        if located.layout == .part, entries[preferred] == nil {
            try checkHeldStream(entries, indexURL: indexURL)
        }
        guard
            let entry = entries[preferred]
                ?? entries.sorted(by: { $0.key < $1.key }).first(where: { $0.value.datatype == "image-downloads" })?
                .value,
            var path = entry.path
        else {
            throw malformed("Ubuntu image index \(indexURL.absoluteString) has no image-downloads entry with a path")
        }
        if keyring != nil, path.hasSuffix(".json") { path = String(path.dropLast(5)) + ".sjson" }
        let productsURL = streamRoot.appending(path: path)
        let what = "Ubuntu image catalog \(productsURL.absoluteString)"
        // The real products file is megabytes of JSON; what is cached is its digest (each product's newest
        // disk image only), so that resolving from cached metadata parses kilobytes.
        let data = try await fetch(productsURL, what: "Ubuntu \(stream) image catalog") { data throws(NimbusError) in
            let full = try decode(Products.self, data, what)
            do {
                return try JSONEncoder().encode(Self.digest(full))
            } catch {
                throw malformed("\(what) could not be re-encoded (\(error))")
            }
        }
        return (try decode(Products.self, data, what), streamRoot)
    }

    /// The stream a content id names (`com.ubuntu.cloud:daily:download` → `daily`), when it is one of Ubuntu's.
    static func streamName(ofContentID id: String) -> String? {
        let parts = id.split(separator: ":")
        guard parts.count >= 3, parts.last == "download" else { return nil }
        let name = String(parts[parts.count - 2])
        return ImageReference.ubuntuStreams.contains(name) ? name : nil
    }

    /// Refuses a one-stream mirror whose index holds another of Ubuntu's streams than the one asked for.
    private func checkHeldStream(_ entries: [String: Index.Entry], indexURL: URL) throws(NimbusError) {
        let held = entries.filter { $0.value.datatype == "image-downloads" }.keys.sorted()
        guard let other = held.first(where: { Self.streamName(ofContentID: $0).map { $0 != stream } ?? false }),
            let otherStream = Self.streamName(ofContentID: other)
        else { return }
        let use = otherStream == "daily" ? "ubuntu:daily:<release>" : "ubuntu:<release>"
        throw NimbusError(
            .notFound,
            "the Ubuntu mirror \(mirror.absoluteString) holds one stream (\(indexURL.absoluteString) is at its top, as "
                + "sstream-mirror writes it): the \(otherStream) stream (\(other)), not \(stream); use \(use) for its "
                + "images, or set mirrors.ubuntu in config.yaml (or NIMBUS_MIRROR_UBUNTU) to a host root holding "
                + "releases/ and daily/ or to a mirror of the \(stream) stream")
    }

    /// The error for an index on neither layout, telling a mirror that has only the other kind of index
    /// (signed `.sjson` without a keyring, unsigned `.json` with one) what to do about it.
    private func indexMissing(suffix: String) async -> NimbusError {
        let urls = [MirrorLayout.whole, .part].map { root($0).appending(path: "streams/v1/index.\(suffix)") }
        var text =
            "the Ubuntu \(stream) image index is not on the mirror: neither \(urls[0].absoluteString) (a host root "
            + "holding releases/ and daily/) nor \(urls[1].absoluteString) (a mirror of one stream, as sstream-mirror "
            + "writes it) is there"
        let otherSuffix = suffix == "json" ? "sjson" : "json"
        for layout in [MirrorLayout.whole, .part] {
            let other = root(layout).appending(path: "streams/v1/index.\(otherSuffix)")
            guard await metadata.isOnMirror(other) else { continue }
            if otherSuffix == "sjson" {
                text +=
                    "; the mirror has only the signed \(other.absoluteString) (sstream-mirror's default), which is "
                    + "read with a keyring: install /usr/share/keyrings/ubuntu-cloudimage-keyring.gpg (ubuntu-keyring) "
                    + "or set NIMBUS_UBUNTU_KEYRING to a keyring file"
            } else {
                text +=
                    "; the mirror has only the unsigned \(other.absoluteString), and signatures are checked: make the "
                    + "mirror from the signed streams/v1/index.sjson (sstream-mirror's default)"
            }
            return NimbusError(.notFound, text)
        }
        return NimbusError(.notFound, text + "; check mirrors.ubuntu in config.yaml or NIMBUS_MIRROR_UBUNTU")
    }

    /// The products with only the newest version that has a disk image, and only its disk items.
    static func digest(_ products: Products) -> Products {
        var reduced = products
        reduced.products = products.products?.mapValues { product in
            var slim = product
            let withDisk = (product.versions ?? [:]).filter {
                $0.value.items?["disk1.img"] != nil || $0.value.items?["uefi1.img"] != nil
            }
            if let serial = withDisk.keys.max(), let version = withDisk[serial] {
                let items = (version.items ?? [:]).filter { $0.key == "disk1.img" || $0.key == "uefi1.img" }
                slim.versions = [serial: Version(items: items)]
            } else if let serial = product.versions?.keys.max() {
                slim.versions = [serial: Version(items: [:])]
            }
            return slim
        }
        return reduced
    }

    private func fetch(
        _ url: URL, what: String, then reduce: @escaping @Sendable (Data) throws(NimbusError) -> Data = { $0 }
    ) async throws(NimbusError) -> Data {
        guard let keyring else {
            return try await metadata.fetch(url, what: what) { data throws(NimbusError) in try reduce(data) }
        }
        return try await metadata.fetch(url, what: what) { data throws(NimbusError) in
            try reduce(
                try await SignatureVerifier.verify(data, keyring: keyring, what: "\(what) \(url.absoluteString)"))
        }
    }

    /// The newest image of `release` (nil: the latest LTS) for `arch`.
    func resolve(release: String?, arch: Architecture) async throws(NimbusError) -> RemoteImage {
        let (catalog, root) = try await products()
        let all = catalog.products ?? [:]
        let wanted = release ?? "lts"
        let matches = all.filter { _, product in
            guard product.os == nil || product.os == "ubuntu" else { return false }
            let aliases = (product.aliases ?? "").split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }
            return aliases.contains(wanted) || product.version == wanted || product.release == wanted
        }
        var candidates = matches
        if candidates.isEmpty, release == nil || release == "lts" {
            // Streams without an `lts` alias: the newest version whose title says LTS.
            let lts = all.filter { $0.value.releaseTitle?.contains("LTS") == true }
            if let newest = lts.values.compactMap(\.version).max(by: {
                $0.compare($1, options: .numeric) == .orderedAscending
            }) {
                candidates = lts.filter { $0.value.version == newest }
            }
        }
        guard !candidates.isEmpty else {
            let known = Set(
                all.values.compactMap { product -> String? in
                    guard let version = product.version else { return nil }
                    return product.release.map { "\(version) (\($0))" } ?? version
                }
            ).sorted { $0.compare($1, options: .numeric) == .orderedAscending }
            let prefix = stream == "daily" ? "ubuntu:daily:" : "ubuntu:"
            throw NimbusError(
                .notFound,
                "Ubuntu release \"\(wanted)\" is not in the \(stream) catalog: use \(prefix) with one of "
                    + known.joined(separator: ", "))
        }
        guard let (key, product) = candidates.first(where: { $0.value.arch == arch.rawValue }) else {
            let arches = Set(candidates.values.compactMap(\.arch)).sorted().joined(separator: ", ")
            throw NimbusError(
                .notFound,
                "Ubuntu \(wanted) has no \(arch) image in the \(stream) catalog (it has: \(arches)): pick another --arch"
            )
        }
        return try image(key: key, product: product, arch: arch, requested: wanted, root: root)
    }

    /// Every supported product's newest image for `arch`, for `image list --remote`.
    func list(arch: Architecture) async throws(NimbusError) -> [RemoteImage] {
        let (catalog, root) = try await products()
        var images: [RemoteImage] = []
        for (key, product) in (catalog.products ?? [:]).sorted(by: { $0.key < $1.key })
        where product.arch == arch.rawValue && product.supported != false {
            if let image = try? image(key: key, product: product, arch: arch, requested: product.version, root: root) {
                images.append(image)
            }
        }
        return images
    }

    /// The newest disk image of `product`, its path resolved against the stream root `root`.
    private func image(key: String, product: Product, arch: Architecture, requested: String?, root: URL)
        throws(NimbusError) -> RemoteImage
    {
        let context = "product \(key) in the Ubuntu \(stream) catalog"
        guard let versions = product.versions, !versions.isEmpty else { throw malformed("\(context) has no versions") }
        // Serials (20240423, 20240423.1) sort as strings, as simplestreams' own tools do.
        let withDisk = versions.filter { $0.value.items?["disk1.img"] != nil || $0.value.items?["uefi1.img"] != nil }
        guard let serial = withDisk.keys.max() else {
            throw malformed("\(context) has no version with a disk1.img item")
        }
        let items = withDisk[serial]?.items ?? [:]
        guard let item = items["uefi1.img"] ?? items["disk1.img"] else { throw malformed("\(context) lost its items") }
        let itemName = items["uefi1.img"] != nil ? "uefi1.img" : "disk1.img"
        let at = "\(context), version \(serial), item \(itemName)"
        guard let path = item.path, !path.isEmpty else { throw malformed("\(at) has no path") }
        guard let size = item.size else { throw malformed("\(at) has no size") }
        guard let hex = item.sha256, let checksum = try? Checksum(parsing: "sha256:\(hex)") else {
            throw malformed("\(at) has no valid sha256")
        }
        let reference = ImageReference.catalog(.ubuntu, release: product.version ?? requested, stream: stream)
            .description
        return RemoteImage(
            reference: reference, distribution: .ubuntu, release: product.version, codename: product.release,
            version: serial, arch: arch, url: root.appending(path: path), size: size, checksum: checksum)
    }

    private func malformed(_ text: String) -> NimbusError {
        NimbusError(
            .integrity, "malformed metadata: \(text); the mirror may be broken or not a simplestreams mirror",
            cause: MalformedMetadata(description: text))
    }

    private func decode<T: Decodable>(_ type: T.Type, _ data: Data, _ what: String) throws(NimbusError) -> T {
        do {
            return try JSONDecoder().decode(type, from: data)
        } catch {
            throw malformed("\(what) is not valid simplestreams JSON (\(error))")
        }
    }
}
