import Foundation
import NimbusCore
import NimbusDisks

/// A cache entry whose record (`<sha256>.json`) does not load: `list` and `find` skip it, and `prune` leaves
/// its image alone.
public struct DamagedImageRecord: Sendable, Equatable {
    /// The image's SHA-256, its name in the cache.
    public var sha256: String
    /// The record.
    public var record: URL
    /// Why it does not load.
    public var problem: String
}

extension ImageStore {
    /// The records in the cache that do not load (truncated, emptied, edited).
    public func damagedRecords() -> [DamagedImageRecord] {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: imagesFolder.path)) ?? []
        return names.sorted().filter { $0.hasSuffix(".json") }.compactMap { name in
            let sha256 = String(name.dropLast(5))
            let record = metadataFile(sha256)
            do {
                _ = try JSONDecoder.iso.decode(CachedImage.self, from: Data(contentsOf: record))
                return nil
            } catch {
                return DamagedImageRecord(sha256: sha256, record: record, problem: Self.describe(error))
            }
        }
    }

    /// Repairs a damaged record, and says what it did. When the image's bytes still hash to its name, the
    /// record is written again from the file (format, sizes, when it entered the cache); the names it was
    /// pulled under are not in the file, so it is listed by digest until a pull or `image import --name`
    /// names it again. When the image is gone or its bytes no longer match, the entry is removed if no disk
    /// is backed by it, and left as it is otherwise (those disks still read it): `.invalidState` says which.
    public func repair(_ damaged: DamagedImageRecord) throws(NimbusError) -> String {
        let file = imageFile(damaged.sha256)
        let intact =
            FileManager.default.fileExists(atPath: file.path) && (try? Self.hashFile(file)) == damaged.sha256
        if intact {
            let info = try DiskImage.inspect(file)
            let attributes = try? FileManager.default.attributesOfItem(atPath: file.path)
            let image = CachedImage(
                sha256: damaged.sha256, path: file.path, format: info.format, virtualSize: info.virtualSize,
                size: (attributes?[.size] as? NSNumber)?.uint64Value ?? 0, references: [], name: nil,
                distribution: nil, release: nil, codename: nil, version: nil, arch: nil,
                source: "unknown (its record was made again by `nimbus doctor --fix`)", sha512: nil,
                sourceSHA256: nil, pulledAt: attributes?[.modificationDate] as? Date ?? Date(), importedFrom: nil)
            try writeMetadata(image)
            return
                "made again from the image, whose SHA-256 matches; the names it was pulled under are lost: pull it again (or `nimbus image import --name`) to name it"
        }
        let users = try usage()[damaged.sha256] ?? []
        guard users.isEmpty else {
            throw NimbusError(
                .invalidState,
                "not touched: its image is missing or its bytes changed, and \(users.joined(separator: ", ")) \(users.count == 1 ? "is" : "are") backed by it"
            )
        }
        for url in [damaged.record, file] {
            guard unlink(url.path) == 0 || errno == ENOENT else { throw posixFailure("remove", url) }
        }
        AtomicFile.syncDirectory(imagesFolder)
        return "removed with its image, which was missing or changed, and backs no disk: pull it again to use it"
    }

    /// One line for why a JSON file did not decode.
    static func describe(_ error: any Error) -> String {
        switch error {
        case DecodingError.dataCorrupted(let context) where context.codingPath.isEmpty:
            return "not JSON"
        case DecodingError.keyNotFound(let key, _):
            return "no \(key.stringValue)"
        case let error as DecodingError:
            return "a value of the wrong kind (\(error.localizedDescription))"
        default:
            return (error as NSError).localizedDescription
        }
    }
}
