import Foundation
import NimbusCore
import NimbusDisks

/// An image in the cache: `<sha256>.img` verified on the way in, described by `<sha256>.json`.
///
/// This is also the stable JSON shape of `nimbus image list --format json` and `nimbus image info`.
public struct CachedImage: Sendable, Codable, Equatable {
    /// The SHA-256 of the image file: its name in the cache.
    public var sha256: String
    /// The image file.
    public var path: String
    /// Found by magic bytes.
    public var format: DiskFormat
    /// What the guest sees.
    public var virtualSize: UInt64
    /// The file's length.
    public var size: UInt64
    /// Every name this image was pulled or imported under, newest first: canonical references
    /// (`ubuntu:24.04`), what the user typed (`ubuntu`), import names.
    public var references: [String]
    /// The name given to `nimbus image import --name`.
    public var name: String?
    /// The catalog it came from; nil for imports and URLs.
    public var distribution: Distribution?
    /// The release (`24.04`, `12`, `stable`).
    public var release: String?
    /// The codename (`noble`, `bookworm`).
    public var codename: String?
    /// Serial, CoreOS release, `latest`; nil for imports.
    public var version: String?
    /// The architecture the catalog named; nil for imports.
    public var arch: Architecture?
    /// The URL or file it came from.
    public var source: String
    /// The catalog's SHA-512 (Debian), so a later pull can match the cache without downloading.
    public var sha512: String?
    /// For images that were decompressed: the SHA-256 of the file as published.
    public var sourceSHA256: String?
    /// When it entered the cache.
    public var pulledAt: Date
    /// For imports: each local file this image was imported from, with its device, inode, size and
    /// modification time when it was hashed, so importing the unchanged file again skips the hashing.
    public var importedFrom: [String: String]?

    /// For images made by `nimbus image capture`: where they came from and what they hold.
    public var capture: CaptureRecord?

    /// The image file as a URL.
    public var url: URL { URL(fileURLWithPath: path) }
    /// The reference to show first.
    public var reference: String { references.first ?? name ?? String(sha256.prefix(12)) }
}

/// How an image was captured from an instance: what an export needs to know that the disk alone does not
/// say.
public struct CaptureRecord: Sendable, Codable, Equatable {
    /// The instance it was captured from.
    public var instance: String
    /// The image that instance was launched from, as `nimbus list` shows it (`debian:12`).
    public var sourceImage: String
    /// That image's serial or version, when it had one.
    public var sourceVersion: String?
    /// When it was captured.
    public var capturedAt: Date
    /// The `vagrant` user with Vagrant's insecure key and passwordless sudo was added (`--vagrant`).
    public var vagrantUser: Bool
    /// Whether the QEMU guest agent is installed, as the guest said at capture; nil when not asked.
    public var guestAgent: Bool?

    public init(
        instance: String, sourceImage: String, sourceVersion: String?, capturedAt: Date, vagrantUser: Bool,
        guestAgent: Bool?
    ) {
        self.instance = instance
        self.sourceImage = sourceImage
        self.sourceVersion = sourceVersion
        self.capturedAt = capturedAt
        self.vagrantUser = vagrantUser
        self.guestAgent = guestAgent
    }
}

/// An image `prune` kept, and why.
public struct KeptImage: Sendable, Codable, Equatable {
    /// The image.
    public var image: CachedImage
    /// The overlays (`<instances>/<name>/disk.qcow2`) backed by it.
    public var usedBy: [String]
}

/// What `prune` did.
public struct PruneReport: Sendable, Codable, Equatable {
    /// The images removed.
    public var removed: [CachedImage]
    /// The images kept, each with the disks backed by it.
    public var kept: [KeptImage]
    /// Bytes freed.
    public var freed: UInt64
}

/// A catalog image for `nimbus image list --remote`, with whether it is cached.
public struct AvailableImage: Sendable, Codable, Equatable {
    /// The catalog entry.
    public var image: RemoteImage
    /// Whether the cache holds it already.
    public var cached: Bool
}
