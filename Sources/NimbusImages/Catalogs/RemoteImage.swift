import Foundation

/// One downloadable image as a catalog describes it.
public struct RemoteImage: Sendable, Codable, Equatable {
    /// How the published file is packed.
    public enum Compression: String, Sendable, Codable {
        case none, xz
    }

    /// The canonical reference (`ubuntu:24.04`, `debian:12`, `fedora-coreos:stable`, or the URL).
    public var reference: String
    /// The catalog; nil for a URL.
    public var distribution: Distribution?
    /// The release as people name it (`24.04`, `12`, `stable`).
    public var release: String?
    /// The codename or title (`noble`, `bookworm`).
    public var codename: String?
    /// The build: a simplestreams serial (`20240423`), a CoreOS release (`40.20240416.3.1`), or `latest`.
    public var version: String?
    /// The architecture of the image.
    public var arch: Architecture
    /// Where the file is.
    public var url: URL
    /// The published size of the file at `url`, when the catalog gives one.
    public var size: UInt64?
    /// The digest of the file at `url`, when known.
    public var checksum: Checksum?
    /// How the file at `url` is packed.
    public var compression: Compression
    /// For compressed files: the SHA-256 of the decompressed image, when published.
    public var uncompressedSHA256: String?

    /// A catalog entry.
    public init(
        reference: String, distribution: Distribution?, release: String?, codename: String?, version: String?,
        arch: Architecture, url: URL, size: UInt64?, checksum: Checksum?, compression: Compression = .none,
        uncompressedSHA256: String? = nil
    ) {
        self.reference = reference
        self.distribution = distribution
        self.release = release
        self.codename = codename
        self.version = version
        self.arch = arch
        self.url = url
        self.size = size
        self.checksum = checksum
        self.compression = compression
        self.uncompressedSHA256 = uncompressedSHA256
    }

    /// The SHA-256 the cached image will have, when the catalog tells it before downloading.
    var expectedCacheKey: String? {
        if compression == .xz { return uncompressedSHA256 }
        return checksum?.algorithm == .sha256 ? checksum?.hex : nil
    }
}

/// A catalog whose metadata did not have the shape its published format promises.
struct MalformedMetadata: Error, Sendable, CustomStringConvertible {
    let description: String
}
