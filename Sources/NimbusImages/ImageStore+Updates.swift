import Foundation
import NimbusCore

/// A cached image against what its catalog names now: the serial it has, and the newest one published.
public struct ImageUpdate: Sendable, Codable, Equatable {
    /// The catalog reference the image was pulled under (`debian:12`).
    public var reference: String
    /// The cached image's build (`20260110-0001`), nil when unknown.
    public var current: String?
    /// The newest build the catalog names (`20260210-0002`, or `latest` for a mirror without build records).
    public var newest: String
    /// Whether the newest build is another file than the cached one (its checksum differs).
    public var available: Bool
}

extension ImageStore {
    /// The catalog reference `image` was pulled under (`debian:12`, `ubuntu:24.04`): the first of its names that
    /// parses as one. Nil for imports, URLs and files, which have no newer builds to offer.
    public nonisolated static func catalogReference(of image: CachedImage) -> ImageReference? {
        for name in image.references {
            if let parsed = try? ImageReference.parse(name, aliases: [:]), case .catalog = parsed { return parsed }
        }
        return nil
    }

    /// What `image`'s catalog names now for the reference it was pulled under, from the metadata this store
    /// may use (with `Options.offline`, only what is cached on disk: no network). Nil when the image has no
    /// catalog reference or the catalog cannot say.
    public func update(of image: CachedImage) async -> ImageUpdate? {
        guard let reference = Self.catalogReference(of: image),
            let newest = try? await resolve(reference, arch: image.arch ?? .host)
        else { return nil }
        return update(of: image, to: newest)
    }

    private func update(of image: CachedImage, to newest: RemoteImage) -> ImageUpdate {
        ImageUpdate(
            reference: newest.reference, current: image.version, newest: newest.version ?? "newer",
            available: !matches(image, newest))
    }

    /// `nimbus image refresh`: the catalog metadata of every cached catalog image fetched afresh (this store's
    /// `Options.refresh` decides; the CLI sets it), one entry per catalog reference, newest first as cached.
    /// A catalog that cannot be reached is a warning, and its reference is left out.
    public func refreshUpdates() async throws(NimbusError) -> [ImageUpdate] {
        var seen: Set<String> = []
        var updates: [ImageUpdate] = []
        for image in try list().sorted(by: { $0.pulledAt > $1.pulledAt }) {
            guard let reference = Self.catalogReference(of: image), seen.insert("\(reference)").inserted else {
                continue
            }
            do {
                updates.append(update(of: image, to: try await resolve(reference, arch: image.arch ?? .host)))
            } catch {
                options.warn("warning: \(reference): \(error)")
            }
        }
        return updates
    }
}
