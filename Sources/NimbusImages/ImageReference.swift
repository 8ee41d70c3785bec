import Foundation
import NimbusCore

/// A CPU architecture of a guest image, in Debian's and Ubuntu's names.
public enum Architecture: String, Sendable, Codable, CaseIterable, CustomStringConvertible {
    case amd64, arm64

    /// The architecture of this host.
    public static var host: Architecture {
        #if arch(arm64)
            .arm64
        #else
            .amd64
        #endif
    }

    /// Parses `amd64`/`arm64` (and the kernel's `x86_64`/`aarch64`), naming the accepted values on error.
    public init(parsing text: String) throws(NimbusError) {
        switch text.lowercased() {
        case "amd64", "x86_64", "x86-64": self = .amd64
        case "arm64", "aarch64": self = .arm64
        default:
            throw NimbusError(.invalidArgument, "architecture \"\(text)\" is not supported: use amd64 or arm64")
        }
    }

    /// The name Fedora CoreOS stream metadata uses.
    public var coreOSName: String { self == .amd64 ? "x86_64" : "aarch64" }

    public var description: String { rawValue }
}

/// The catalogs Nimbus reads.
public enum Distribution: String, Sendable, Codable, CaseIterable, CustomStringConvertible {
    case ubuntu
    case debian
    case fedoraCoreOS = "fedora-coreos"

    public var description: String { rawValue }
}

/// What a user names when they ask for an image.
///
/// `ubuntu`, `ubuntu:24.04`, `ubuntu:noble`, `ubuntu:lts`, `ubuntu:daily:26.04`; `debian`, `debian:12`,
/// `debian:bookworm`; `fedora-coreos`, `fedora-coreos:stable|testing|next`; `file:///path/x.qcow2` or a
/// plain path; `https://host/x.img`. Aliases (`nimbus image alias`) are expanded by `parse(_:aliases:)`.
public enum ImageReference: Hashable, Sendable, CustomStringConvertible {
    /// An image from a distribution's catalog. `release` nil means the default (latest LTS, latest
    /// stable); `stream` is Ubuntu's `released`/`daily`, nil elsewhere.
    case catalog(Distribution, release: String?, stream: String?)
    /// A local file, imported into the cache.
    case file(URL)
    /// An image at an HTTP(S) URL, with an optional checksum to verify it against.
    case url(URL, checksum: Checksum?)
    /// An image already in the cache under this name (`nimbus image import --name`); made by
    /// `ImageStore.reference(_:)` when the text names no catalog but a cached image.
    case named(String)

    /// The Debian releases with genericcloud images, newest first; the first is the default.
    public static let debianReleases: [(version: String, codename: String)] = [
        ("13", "trixie"), ("12", "bookworm"), ("11", "bullseye"),
    ]
    /// The Fedora CoreOS streams; the first is the default.
    public static let coreOSStreams = ["stable", "testing", "next"]
    /// Ubuntu's simplestreams streams.
    public static let ubuntuStreams = ["released", "daily"]

    /// Parses `text`; a bare name that is no distribution is looked up in `aliases`.
    public static func parse(
        _ text: String, checksum: String? = nil, aliases: [String: String] = [:]
    ) throws(NimbusError) -> ImageReference {
        try parse(text, checksum: checksum, aliases: aliases, depth: 0)
    }

    private static func parse(
        _ text: String, checksum: String?, aliases: [String: String], depth: Int
    ) throws(NimbusError) -> ImageReference {
        let trimmed = text.trimmingCharacters(in: .whitespaces)
        guard !trimmed.isEmpty else {
            throw NimbusError(.invalidArgument, "an image reference is empty: name one like ubuntu:24.04 or debian:12")
        }
        let lower = trimmed.lowercased()
        if lower.hasPrefix("https://") || lower.hasPrefix("http://") {
            guard let url = URL(string: trimmed), url.host != nil else {
                throw NimbusError(.invalidArgument, "image URL \"\(trimmed)\" is not a valid URL")
            }
            return .url(url, checksum: try checksum.map { value throws(NimbusError) in try Checksum(parsing: value) })
        }
        if checksum != nil {
            throw NimbusError(
                .invalidArgument, "--checksum applies to https:// images only; \(trimmed) is verified by its catalog")
        }
        if lower.hasPrefix("file://") {
            guard let url = URL(string: trimmed), url.isFileURL, !url.path.isEmpty else {
                throw NimbusError(.invalidArgument, "\"\(trimmed)\" is not a file URL: write file:///absolute/path")
            }
            return .file(url.standardizedFileURL)
        }
        if trimmed.contains("/") || trimmed.hasPrefix(".") || trimmed.hasPrefix("~") {
            let expanded = (trimmed as NSString).expandingTildeInPath
            return .file(URL(fileURLWithPath: expanded).standardizedFileURL)
        }
        let parts = lower.split(separator: ":", omittingEmptySubsequences: false).map(String.init)
        switch parts[0] {
        case "ubuntu":
            switch parts.count {
            case 1: return .catalog(.ubuntu, release: nil, stream: "released")
            case 2 where !parts[1].isEmpty:
                if ubuntuStreams.contains(parts[1]) { return .catalog(.ubuntu, release: nil, stream: parts[1]) }
                return .catalog(.ubuntu, release: parts[1], stream: "released")
            case 3 where ubuntuStreams.contains(parts[1]) && !parts[2].isEmpty:
                return .catalog(.ubuntu, release: parts[2], stream: parts[1])
            default:
                throw NimbusError(
                    .invalidArgument,
                    "image \"\(text)\" is not an Ubuntu reference: write ubuntu, ubuntu:24.04, ubuntu:noble, "
                        + "ubuntu:lts or ubuntu:daily:26.04")
            }
        case "debian":
            guard parts.count <= 2 else { break }
            guard parts.count == 2 else { return .catalog(.debian, release: debianReleases[0].version, stream: nil) }
            if let known = debianReleases.first(where: { $0.version == parts[1] || $0.codename == parts[1] }) {
                return .catalog(.debian, release: known.version, stream: nil)
            }
            let list = debianReleases.map { "\($0.version) (\($0.codename))" }.joined(separator: ", ")
            throw NimbusError(.notFound, "Debian release \"\(parts[1])\" is not known: use one of \(list)")
        case "fedora-coreos", "fcos":
            guard parts.count <= 2 else { break }
            let stream = parts.count == 2 ? parts[1] : coreOSStreams[0]
            guard coreOSStreams.contains(stream) else {
                throw NimbusError(
                    .notFound,
                    "Fedora CoreOS stream \"\(stream)\" is not known: use one of \(coreOSStreams.joined(separator: ", "))"
                )
            }
            return .catalog(.fedoraCoreOS, release: stream, stream: nil)
        default:
            if parts.count == 1, let target = aliases[trimmed] ?? aliases[lower] {
                guard depth < 8 else {
                    throw NimbusError(
                        .invalidArgument, "image alias \"\(trimmed)\" refers to itself through other aliases")
                }
                return try parse(target, checksum: nil, aliases: aliases, depth: depth + 1)
            }
        }
        throw NimbusError(
            .invalidArgument,
            "image \"\(text)\" is not known: use ubuntu[:release], debian[:release], fedora-coreos[:stream], "
                + "a file path, an https:// URL, or an alias made with `nimbus image alias`")
    }

    /// The canonical text of this reference, as stored in the cache metadata.
    public var description: String {
        switch self {
        case .catalog(.ubuntu, let release, let stream):
            let prefix = stream == "daily" ? "ubuntu:daily" : "ubuntu"
            return release.map { "\(prefix):\($0)" } ?? prefix
        case .catalog(let distribution, let release, _):
            return release.map { "\(distribution):\($0)" } ?? distribution.rawValue
        case .file(let url): return url.absoluteString
        case .url(let url, _): return url.absoluteString
        case .named(let name): return name
        }
    }
}
