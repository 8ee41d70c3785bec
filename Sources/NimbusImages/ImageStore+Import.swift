import Crypto
import Foundation
import NimbusCore
import NimbusDisks
import Synchronization

extension ImageStore {
    // MARK: Import

    /// Copies `file` into the cache, hashing while copying, and records it under `name`.
    public func importImage(_ file: URL, name: String?, as typed: String? = nil) async throws(NimbusError)
        -> CachedImage
    {
        if let name, name.isEmpty || name.contains("/") || name.contains(where: \.isWhitespace) {
            throw NimbusError(
                .invalidArgument, "image name \"\(name)\" is not valid: use letters, digits, '-', '.', ':'")
        }
        let source = file.standardizedFileURL
        guard FileManager.default.fileExists(atPath: source.path) else {
            throw NimbusError(.notFound, "\(source.path) does not exist: check the path")
        }
        // The same unchanged file imported before (each launch from a local file comes here): no hashing.
        let stamp = Self.stamp(source)
        if let stamp, let known = try list().first(where: { $0.importedFrom?[source.absoluteString] == stamp }) {
            var image = known
            if let name { image.name = name }
            return try record(image, names: [name, typed, source.absoluteString].compactMap { $0 })
        }
        // Refuse what is no disk image before copying gigabytes.
        let info = try DiskImage.inspect(source)
        try makeFolders()
        let partial = partialFolder.appending(path: "import-\(getpid())-\(UUID().uuidString.prefix(8)).img")
        let result: TransferResult
        do {
            result = try Downloader.copy(
                source, into: partial, sha512: false, what: name ?? source.lastPathComponent, progress: options.progress
            )
        } catch {
            try? FileManager.default.removeItem(at: partial)
            throw error
        }
        let lock = try await FileLock.acquire(
            locksFolder.appending(path: "\(result.sha256.prefix(32)).lock"), what: "the import of \(source.path)")
        defer { lock.unlock() }
        var image = CachedImage(
            sha256: result.sha256, path: imageFile(result.sha256).path, format: info.format,
            virtualSize: info.virtualSize, size: result.bytes, references: [], name: name, distribution: nil,
            release: nil, codename: nil, version: nil, arch: nil, source: source.absoluteString, sha512: nil,
            sourceSHA256: nil, pulledAt: Date(), importedFrom: nil)
        if let existing = entry(result.sha256) {
            try? FileManager.default.removeItem(at: partial)
            image = existing
            if let name { image.name = name }
        } else {
            try commit(partial, as: result.sha256)
        }
        if let stamp {
            image.importedFrom = (image.importedFrom ?? [:]).merging([source.absoluteString: stamp]) { $1 }
            try writeMetadata(image)
        }
        return try record(image, names: [name, typed, source.absoluteString].compactMap { $0 })
    }

    /// Device, inode, size and modification time of a regular file: what changes when its bytes do.
    static func stamp(_ url: URL) -> String? {
        var status = stat()
        guard stat(url.path, &status) == 0, (status.st_mode & S_IFMT) == S_IFREG else { return nil }
        return "\(status.st_dev):\(status.st_ino):\(status.st_size):\(status.st_mtim.tv_sec).\(status.st_mtim.tv_nsec)"
    }
}
