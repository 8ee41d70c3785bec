import Foundation
import NimbusCore

/// Debian's official cloud images: `<codename>/latest/` under `images/cloud/` holds
/// `debian-<N>-genericcloud-<arch>.qcow2` and a `SHA512SUMS` file in coreutils format (`<hex>  <name>` per line),
/// and beside each image its build record `debian-<N>-genericcloud-<arch>.json` (a `List` whose `Build` item is
/// labelled `cloud.debian.org/version: 20251020-2270`, the serial of the dated folder `latest/` copies).
///
/// The mirror is a mirror of `images/cloud/` (`<mirror>/<codename>/latest/`), or of one codename's tree
/// (`<mirror>/latest/` and the dated folders, for a site that mirrored only `bookworm/`): which one is decided
/// by where `SHA512SUMS` is (`MetadataCache.locate`). A one-codename mirror serves only the release whose
/// `debian-<N>-` files its `SHA512SUMS` lists.
struct DebianCloud: Sendable {
    let mirror: URL
    let metadata: MetadataCache

    func resolve(release: String, arch: Architecture) async throws(NimbusError) -> RemoteImage {
        guard
            let known = ImageReference.debianReleases.first(where: { $0.version == release || $0.codename == release })
        else {
            let list = ImageReference.debianReleases.map { "\($0.version) (\($0.codename))" }.joined(separator: ", ")
            throw NimbusError(.notFound, "Debian release \"\(release)\" is not known: use one of \(list)")
        }
        let folders: (MirrorLayout) -> URL = { layout in
            switch layout {
            case .whole: mirror.appending(path: "\(known.codename)/latest/")
            case .part: mirror.appending(path: "latest/")
            }
        }
        let what = "Debian \(known.codename) checksum list"
        let located = try await metadata.locate(
            catalog: "debian", mirror: mirror, file: { folders($0).appending(path: "SHA512SUMS") },
            fetch: { url throws(NimbusError) in try await metadata.fetch(url, what: what) })
        guard let located else {
            throw NimbusError(
                .notFound,
                "the \(what) is not on the mirror: neither \(folders(.whole).absoluteString)SHA512SUMS (a mirror of "
                    + "images/cloud/ holding <codename>/latest/) nor \(folders(.part).absoluteString)SHA512SUMS (a mirror "
                    + "of one codename's tree) is there; check mirrors.debian in config.yaml or NIMBUS_MIRROR_DEBIAN")
        }
        let folder = folders(located.layout)
        let sumsURL = located.url
        let name = "debian-\(known.version)-genericcloud-\(arch).qcow2"
        let text = String(decoding: located.data, as: UTF8.self)
        if located.layout == .part {
            try checkHeldRelease(text, known, sumsURL: sumsURL)
        }
        var found: Checksum?
        for line in text.split(whereSeparator: \.isNewline) {
            let fields = line.split(separator: " ", maxSplits: 1)
            guard fields.count == 2 else { continue }
            // coreutils marks binary mode with a leading '*' on the name.
            let file = fields[1].trimmingCharacters(in: .whitespaces).trimmingCharacters(
                in: CharacterSet(charactersIn: "*"))
            if file == name {
                guard let checksum = try? Checksum(parsing: "sha512:\(fields[0])") else {
                    throw NimbusError(
                        .integrity,
                        "malformed metadata: the SHA512SUMS line for \(name) in \(sumsURL.absoluteString) has no valid sha512"
                    )
                }
                found = checksum
            }
        }
        guard let found else {
            throw NimbusError(
                .notFound,
                "Debian \(known.version) has no \(arch) genericcloud image: \(sumsURL.absoluteString) does not list \(name)"
            )
        }
        let record = "debian-\(known.version)-genericcloud-\(arch).json"
        let serial = try? await metadata.fetch(
            folder.appending(path: record), what: "Debian \(known.codename) build record")
        return RemoteImage(
            reference: "debian:\(known.version)", distribution: .debian, release: known.version,
            codename: known.codename, version: serial.flatMap(Self.serial(inBuildRecord:)) ?? "latest", arch: arch,
            url: folder.appending(path: name), size: nil, checksum: found)
    }

    /// The serial (`20251020-2270`) a build record names: the `cloud.debian.org/version` label of its `Build`
    /// item. Nil for anything else: a mirror without records still resolves, as version `latest`.
    static func serial(inBuildRecord data: Data) -> String? {
        struct Record: Decodable {
            struct Item: Decodable {
                struct Metadata: Decodable { var labels: [String: String]? }
                var kind: String?
                var metadata: Metadata?
            }
            var items: [Item]?
        }
        guard let record = try? JSONDecoder().decode(Record.self, from: data) else { return nil }
        let items = record.items ?? []
        let build = items.first { $0.kind == "Build" } ?? items.first
        guard let serial = build?.metadata?.labels?["cloud.debian.org/version"], !serial.isEmpty else { return nil }
        return serial
    }

    /// The file names a `SHA512SUMS` lists.
    static func names(in text: String) -> [String] {
        text.split(whereSeparator: \.isNewline).compactMap { line in
            let fields = line.split(separator: " ", maxSplits: 1)
            guard fields.count == 2 else { return nil }
            // coreutils marks binary mode with a leading '*' on the name.
            return fields[1].trimmingCharacters(in: .whitespaces).trimmingCharacters(
                in: CharacterSet(charactersIn: "*"))
        }
    }

    /// Refuses a one-codename mirror whose `SHA512SUMS` lists no `debian-<N>-` file of the release asked for,
    /// naming the release(s) it does list.
    private func checkHeldRelease(
        _ text: String, _ known: (version: String, codename: String), sumsURL: URL
    ) throws(NimbusError) {
        let versions = Set(
            Self.names(in: text).compactMap { name -> String? in
                guard name.hasPrefix("debian-") else { return nil }
                let version = name.dropFirst(7).prefix { $0 != "-" }
                return version.isEmpty ? nil : String(version)
            })
        guard !versions.contains(known.version) else { return }
        let held = versions.sorted { $0.compare($1, options: .numeric) == .orderedDescending }.map { version in
            ImageReference.debianReleases.first { $0.version == version }.map { "Debian \(version) (\($0.codename))" }
                ?? "Debian \(version)"
        }
        let holds = held.isEmpty ? "no debian-<N>- image" : held.joined(separator: ", ")
        let use = versions.first { version in ImageReference.debianReleases.contains { $0.version == version } }
        throw NimbusError(
            .notFound,
            "the Debian mirror \(mirror.absoluteString) is one codename's tree (\(sumsURL.absoluteString) is at its "
                + "top) and holds \(holds), not Debian \(known.version) (\(known.codename)); "
                + (use.map { "use debian:\($0) for its images, or " } ?? "")
                + "set mirrors.debian in config.yaml (or NIMBUS_MIRROR_DEBIAN) to a mirror of images/cloud/ holding "
                + "<codename>/latest/ or to a mirror of \(known.codename)/")
    }
}
