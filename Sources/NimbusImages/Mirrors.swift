import Foundation
import NimbusCore
import Yams

/// Where each catalog is fetched from. Air-gapped sites and the tests point these at their own mirrors.
///
/// Precedence: `NIMBUS_MIRROR_UBUNTU` / `NIMBUS_MIRROR_DEBIAN` / `NIMBUS_MIRROR_FEDORA_COREOS` in the
/// environment, then `mirrors.ubuntu|debian|fedora-coreos` in config.yaml, then the official hosts.
///
/// The Ubuntu and Debian mirrors may each have one of two layouts, told apart by what the mirror holds
/// (the publisher's layout is tried first; the one found is remembered in the metadata folder, so resolving
/// from cached metadata asks the mirror nothing; see `MetadataCache.locate`). Fedora CoreOS has one.
public struct Mirrors: Sendable, Equatable {
    /// Either a host root like cloud-images.ubuntu.com, holding `releases/streams/v1/…` and
    /// `daily/streams/v1/…` with the items' paths below `releases/` and `daily/`; or a mirror of one stream
    /// as `sstream-mirror` writes it, holding `streams/v1/index.json` (or `.sjson`) and the items' paths at its
    /// top, which serves only the stream its index's content id names (`com.ubuntu.cloud:released:download`
    /// or `…:daily:download`).
    public var ubuntu: URL
    /// Either a mirror of `images/cloud/`, holding `<codename>/latest/…`; or a mirror of one codename's tree
    /// (`bookworm/`), holding `latest/…` and the dated folders at its top, which serves only the release its
    /// `latest/SHA512SUMS` lists.
    public var debian: URL
    /// Holds `streams/<stream>.json` and `prod/streams/…`, as builds.coreos.fedoraproject.org does: artifact
    /// locations on the official host are fetched from the same path on the mirror, and locations on any other
    /// host (a stream file rewritten for a site) as they are.
    public var fedoraCoreOS: URL

    /// The distributions' own hosts.
    public static let official = Mirrors(
        ubuntu: URL(string: "https://cloud-images.ubuntu.com/")!,
        debian: URL(string: "https://cloud.debian.org/images/cloud/")!,
        fedoraCoreOS: URL(string: "https://builds.coreos.fedoraproject.org/")!)

    /// Mirrors at these base URLs (a trailing slash is added).
    public init(ubuntu: URL, debian: URL, fedoraCoreOS: URL) {
        self.ubuntu = ubuntu.withTrailingSlash
        self.debian = debian.withTrailingSlash
        self.fedoraCoreOS = fedoraCoreOS.withTrailingSlash
    }

    /// The mirror of `distribution`.
    public func base(for distribution: Distribution) -> URL {
        switch distribution {
        case .ubuntu: ubuntu
        case .debian: debian
        case .fedoraCoreOS: fedoraCoreOS
        }
    }

    /// Reads config.yaml's `mirrors` mapping (the rest of the file belongs to other modules and is not
    /// interpreted) and the environment.
    public static func load(
        configFile: URL, environment: [String: String] = ProcessInfo.processInfo.environment
    ) throws(NimbusError) -> Mirrors {
        var mirrors = official
        if let text = try? String(contentsOf: configFile, encoding: .utf8) {
            let document: Any?
            do {
                document = try Yams.load(yaml: text)
            } catch {
                throw NimbusError(
                    .invalidArgument, "\(configFile.path) is not valid YAML: fix the file", cause: ErrorText(error))
            }
            if let root = document as? [String: Any], let section = root["mirrors"] {
                guard let table = section as? [String: Any] else {
                    throw NimbusError(
                        .invalidArgument,
                        "\(configFile.path): `mirrors` must be a mapping of ubuntu, debian, fedora-coreos to URLs")
                }
                for (key, value) in table {
                    let url = try mirrorURL(value, "mirrors.\(key) in \(configFile.path)")
                    switch key {
                    case "ubuntu": mirrors.ubuntu = url
                    case "debian": mirrors.debian = url
                    case "fedora-coreos": mirrors.fedoraCoreOS = url
                    default:
                        throw NimbusError(
                            .invalidArgument,
                            "\(configFile.path): mirrors.\(key) is not a catalog: use ubuntu, debian or fedora-coreos")
                    }
                }
            }
        }
        let variables: [(String, WritableKeyPath<Mirrors, URL>)] = [
            ("NIMBUS_MIRROR_UBUNTU", \.ubuntu), ("NIMBUS_MIRROR_DEBIAN", \.debian),
            ("NIMBUS_MIRROR_FEDORA_COREOS", \.fedoraCoreOS),
        ]
        for (name, path) in variables {
            if let value = environment[name], !value.isEmpty { mirrors[keyPath: path] = try mirrorURL(value, name) }
        }
        return mirrors
    }

    private static func mirrorURL(_ value: Any, _ what: String) throws(NimbusError) -> URL {
        guard let text = value as? String, let url = URL(string: text), let scheme = url.scheme?.lowercased(),
            ["http", "https", "file"].contains(scheme)
        else {
            throw NimbusError(.invalidArgument, "\(what) = \(value) is not an http(s):// or file:// URL")
        }
        return url.withTrailingSlash
    }
}

/// Any error as a Sendable cause, kept as its text (Yams and Foundation errors are not all Sendable).
struct ErrorText: Error, Sendable, CustomStringConvertible {
    let description: String
    init(_ error: any Error) { description = String(describing: error) }
}

extension URL {
    var withTrailingSlash: URL {
        absoluteString.hasSuffix("/") ? self : URL(string: absoluteString + "/") ?? self
    }
}

/// User-defined names for references (`nimbus image alias web ubuntu:24.04`), kept in
/// `<config>/image-aliases.yaml` as a flat mapping.
public struct ImageAliases: Sendable {
    /// The aliases file.
    public let file: URL

    /// The aliases of the installation at `paths`.
    public init(paths: NimbusPaths) {
        file = paths.config.appending(path: "image-aliases.yaml")
    }

    /// All aliases; an absent file is no aliases.
    public func load() throws(NimbusError) -> [String: String] {
        guard let text = try? String(contentsOf: file, encoding: .utf8) else { return [:] }
        do {
            return try YAMLDecoder().decode([String: String].self, from: text)
        } catch {
            throw NimbusError(
                .invalidArgument, "\(file.path) is not a mapping of alias names to image references: fix or remove it",
                cause: ErrorText(error))
        }
    }

    /// Sets `name` to `reference` (already validated by the caller), or removes it when `reference` is nil.
    public func set(_ name: String, to reference: String?) throws(NimbusError) {
        let valid =
            name.first?.isLetter == true
            && name.allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "-" || $0 == "_" || $0 == ".") }
        guard valid, Distribution(rawValue: name.lowercased()) == nil, name.lowercased() != "fcos" else {
            throw NimbusError(
                .invalidArgument,
                "alias name \"\(name)\" is not allowed: start with a letter, use letters, digits, '-', '_' or '.', "
                    + "and do not reuse ubuntu, debian or fedora-coreos")
        }
        var all = try load()
        all[name] = reference
        do {
            try FileManager.default.createDirectory(
                at: file.deletingLastPathComponent(), withIntermediateDirectories: true)
            let encoder = YAMLEncoder()
            encoder.options.sortKeys = true
            try AtomicFile.write(Data(try encoder.encode(all).utf8), to: file)
        } catch let error as NimbusError {
            throw error
        } catch {
            throw NimbusError(.io, "could not write \(file.path)", cause: ErrorText(error))
        }
    }
}
