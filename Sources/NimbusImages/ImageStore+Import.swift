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
        try makeFolders()
        let partial = partialFolder.appending(path: "import-\(getpid())-\(UUID().uuidString.prefix(8)).img")
        // Refuse what is no disk image before copying gigabytes; another hypervisor's disk (an exported VMDK
        // or VHDX) is converted to qcow2 on the way in, so that the cache holds what overlays can be backed by.
        var info: DiskInfo
        let result: TransferResult
        do {
            do {
                info = try DiskImage.inspect(source)
                result = try Downloader.copy(
                    source, into: partial, sha512: false, what: name ?? source.lastPathComponent,
                    progress: options.progress)
            } catch let error where DiskImage.foreignFormat(of: error) != nil {
                try await DiskImage.requireSelfContained(source, format: DiskImage.foreignFormat(of: error) ?? "")
                options.warn(
                    "\(source.lastPathComponent) is a \(DiskImage.foreignFormat(of: error) ?? "") disk: converting it to qcow2"
                )
                try await DiskImage.write(source, as: .qcow2, to: partial)
                info = try DiskImage.inspect(partial)
                result = TransferResult(sha256: try Self.hashFile(partial), sha512: nil, bytes: info.fileSize)
            }
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

extension ImageStore {
    // MARK: Capture

    /// A folder in the cache's filesystem for a disk on its way in: a file made there and given to
    /// `adopt` is renamed into the cache, not copied.
    public func stagingFolder() throws(NimbusError) -> URL {
        try makeFolders()
        return partialFolder
    }

    /// Refuses a name for a new local image that is not valid or that an image, alias or catalog has.
    public func requireNewName(_ name: String) throws(NimbusError) {
        guard !name.isEmpty, !name.contains("/"), !name.contains(where: \.isWhitespace),
            name.first.map({ $0.isLetter || $0.isNumber }) == true
        else {
            throw NimbusError(
                .invalidArgument,
                "image name \"\(name)\" is not valid: start with a letter or digit, then letters, digits, '-', '.', ':'"
            )
        }
        if case .catalog = try? ImageReference.parse(name, aliases: try aliases()) {
            throw NimbusError(
                .invalidArgument, "\(name) names a catalog image: choose a name that is not a distribution's")
        }
        if let existing = try find(name) {
            throw NimbusError(
                .alreadyExists,
                "an image is named \(name) already (\(existing.reference), \(existing.sha256.prefix(12))): "
                    + "choose another name, or remove it first with `nimbus image rm \(name)`")
        }
    }

    /// Takes `file`, a disk made in `stagingFolder()`, into the cache as the local image `name`, with what
    /// `source` said of its origin (distribution, release, architecture) and the capture's record.
    public func adopt(_ file: URL, name: String, source: CachedImage?, capture: CaptureRecord) async throws(NimbusError)
        -> CachedImage
    {
        try requireNewName(name)
        let info = try DiskImage.inspect(file)
        let sha256 = try Self.hashFile(file)
        let lock = try await FileLock.acquire(
            locksFolder.appending(path: "\(sha256.prefix(32)).lock"), what: "the capture \(name)")
        defer { lock.unlock() }
        var image = CachedImage(
            sha256: sha256, path: imageFile(sha256).path, format: info.format, virtualSize: info.virtualSize,
            size: info.fileSize, references: [], name: name, distribution: source?.distribution,
            release: source?.release, codename: source?.codename, version: nil, arch: source?.arch,
            source: "capture of \(capture.instance)", sha512: nil, sourceSHA256: nil, pulledAt: Date(),
            importedFrom: nil, capture: capture)
        if let existing = entry(sha256) {
            try? FileManager.default.removeItem(at: file)
            image = existing
            image.name = name
            image.capture = capture
        } else {
            try commit(file, as: sha256)
        }
        return try record(image, names: [name])
    }
}
