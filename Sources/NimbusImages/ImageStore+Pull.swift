import Crypto
import Foundation
import NimbusCore
import NimbusDisks
import Synchronization

extension ImageStore {
    // MARK: Pull

    /// Makes the image `reference` names present in the cache and returns it: a cache hit when the
    /// catalog's checksum matches an entry, else a verified download (or, for a file, an import).
    public func pull(_ reference: ImageReference, arch: Architecture = .host, as typed: String? = nil)
        async throws(NimbusError) -> CachedImage
    {
        if case .file(let url) = reference {
            return try await importImage(url, name: nil, as: typed)
        }
        if case .named(let name) = reference { return try info(name) }
        let remote = try await resolve(reference, arch: arch)
        let names = [remote.reference, typed].compactMap { $0 }
        if let hit = try cachedEntry(for: remote) { return try record(hit, names: names) }
        if case .url(_, nil) = reference {
            options.warn(
                "warning: no --checksum given for \(remote.url.absoluteString): integrity rests on HTTPS alone")
        }
        let key = lockKey(for: remote)
        try makeFolders()
        let lock = try await FileLock.acquire(
            locksFolder.appending(path: "\(key).lock"), timeout: .seconds(6 * 3600),
            what: "the download of \(remote.reference)")
        defer { lock.unlock() }
        // Another process may have finished it while this one waited.
        if let hit = try cachedEntry(for: remote) { return try record(hit, names: names) }
        return try await download(remote, key: key, names: names)
    }

    func cachedEntry(for remote: RemoteImage) throws(NimbusError) -> CachedImage? {
        if let key = remote.expectedCacheKey { return entry(key) }
        let all = try list()
        if remote.checksum != nil { return all.first { matches($0, remote) } }
        // A URL without a checksum: the earlier download of it, unless --refresh.
        return options.refresh ? nil : all.first { $0.source == remote.url.absoluteString }
    }

    func lockKey(for remote: RemoteImage) -> String {
        if let checksum = remote.checksum { return String(checksum.hex.prefix(32)) }
        return SHA256.hash(data: Data(remote.url.absoluteString.utf8)).prefix(16).map { String(format: "%02x", $0) }
            .joined()
    }

    func download(_ remote: RemoteImage, key: String, names: [String]) async throws(NimbusError) -> CachedImage {
        let partial = partialFolder.appending(path: remote.compression == .xz ? "\(key).img.xz" : "\(key).img")
        let sourceNote = partialFolder.appending(path: "\(key).source")
        // A partial file from another URL (the catalog moved on) is not resumed.
        if (try? String(contentsOf: sourceNote, encoding: .utf8)) != remote.url.absoluteString {
            try? FileManager.default.removeItem(at: partial)
            try? FileManager.default.removeItem(at: Downloader.etagFile(of: partial))
            try AtomicFile.write(Data(remote.url.absoluteString.utf8), to: sourceNote)
        }
        let wantsSHA512 = remote.checksum?.algorithm == .sha512
        let result: TransferResult
        do {
            if remote.url.isFileURL {
                result = try Downloader.copy(
                    remote.url, into: partial, sha512: wantsSHA512, what: remote.reference, progress: options.progress)
            } else {
                result = try await Downloader(policy: options.retry, progress: options.progress)
                    .download(remote.url, into: partial, size: remote.size, sha512: wantsSHA512, what: remote.reference)
            }
        } catch {
            // A download cut short stays for the next run to resume; anything else is removed.
            if error.code != .network { discardPartial(partial, sourceNote) }
            throw error
        }
        if let checksum = remote.checksum {
            let got = checksum.algorithm == .sha256 ? result.sha256 : (result.sha512 ?? "")
            guard got == checksum.hex else {
                discardPartial(partial, sourceNote)
                throw NimbusError(
                    .integrity,
                    "image checksum mismatch for \(remote.reference) (expected \(checksum.algorithm.rawValue) "
                        + "\(checksum.hex), got \(got)): the partial download was removed; run the command again")
            }
        }
        var imagePath = partial
        var sha256 = result.sha256
        var sourceSHA256: String?
        if remote.compression == .xz {
            let decompressed: (URL, String)
            do {
                decompressed = try await Self.decompressXZ(partial)
            } catch {
                discardPartial(partial, sourceNote)
                throw error
            }
            (imagePath, sha256) = decompressed
            sourceSHA256 = result.sha256
            if let expected = remote.uncompressedSHA256, expected != sha256 {
                discardPartial(imagePath, sourceNote)
                throw NimbusError(
                    .integrity,
                    "image checksum mismatch for \(remote.reference) after decompression (expected sha256 \(expected), "
                        + "got \(sha256)): the download was removed; run the command again")
            }
        }
        let info: DiskInfo
        do {
            info = try DiskImage.inspect(imagePath)
        } catch {
            discardPartial(imagePath, sourceNote)
            throw error
        }
        var image = CachedImage(
            sha256: sha256, path: imageFile(sha256).path, format: info.format, virtualSize: info.virtualSize,
            size: info.fileSize, references: [], name: nil, distribution: remote.distribution, release: remote.release,
            codename: remote.codename, version: remote.version, arch: remote.arch, source: remote.url.absoluteString,
            sha512: result.sha512, sourceSHA256: sourceSHA256, pulledAt: Date(), importedFrom: nil)
        if let existing = entry(sha256) {
            image.references = existing.references
            discardPartial(imagePath, sourceNote)
        } else {
            try commit(imagePath, as: sha256)
            try? FileManager.default.removeItem(at: sourceNote)
            try? FileManager.default.removeItem(at: Downloader.etagFile(of: partial))
        }
        return try record(image, names: names)
    }

    func discardPartial(_ file: URL, _ note: URL) {
        try? FileManager.default.removeItem(at: file)
        try? FileManager.default.removeItem(at: Downloader.etagFile(of: file))
        try? FileManager.default.removeItem(at: note)
    }

    /// Renames a verified, fsync'ed file into place as `<sha256>.img`.
    func commit(_ file: URL, as sha256: String) throws(NimbusError) {
        let destination = imageFile(sha256)
        guard rename(file.path, destination.path) == 0 else {
            let error = posixFailure("move the image into", destination)
            try? FileManager.default.removeItem(at: file)
            throw error
        }
        AtomicFile.syncDirectory(imagesFolder)
    }

    /// Adds `names` to an entry's references and writes its metadata.
    func record(_ image: CachedImage, names: [String]) throws(NimbusError) -> CachedImage {
        // A cache hit under names already recorded writes nothing (no fsync on the fast path).
        if !names.isEmpty, names.allSatisfy(image.references.contains), entry(image.sha256) == image { return image }
        var updated = image
        for name in names.reversed() where !name.isEmpty {
            updated.references.removeAll { $0 == name }
            updated.references.insert(name, at: 0)
        }
        try writeMetadata(updated)
        return updated
    }

    func writeMetadata(_ image: CachedImage) throws(NimbusError) {
        let data: Data
        do {
            data = try JSONEncoder.iso.encode(image)
        } catch {
            throw NimbusError(.internalError, "could not encode image metadata", cause: ErrorText(error))
        }
        try AtomicFile.write(data, to: metadataFile(image.sha256))
    }

    func makeFolders() throws(NimbusError) {
        for folder in [imagesFolder, partialFolder, locksFolder] {
            do {
                try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
            } catch {
                throw NimbusError(.io, "could not create \(folder.path)", cause: ErrorText(error))
            }
        }
    }

    /// Decompresses `<x>.img.xz` into `<x>.img` with the `xz` program (file to file, multi-threaded),
    /// then hashes the result. Returns the image and its SHA-256.
    static func decompressXZ(_ compressed: URL) async throws(NimbusError) -> (URL, String) {
        let xz = try ProgramRunner.require("xz", package: "xz-utils")
        let output = compressed.deletingPathExtension()
        try? FileManager.default.removeItem(at: output)
        do {
            try await ProgramRunner.run(xz, ["--decompress", "--force", "--threads=0", compressed.path])
        } catch {
            try? FileManager.default.removeItem(at: output)
            throw NimbusError(
                .integrity, "could not decompress \(compressed.lastPathComponent): \(error.message)", cause: error.cause
            )
        }
        let digest = try hashFile(output)
        return (output, digest)
    }

    static func hashFile(_ url: URL) throws(NimbusError) -> String {
        let file = try PartialFile(url)
        var digest = StreamingDigest(sha512: false)
        _ = try file.rehash(into: &digest)
        guard fsync(file.fd) == 0 else { throw posixFailure("sync", url) }
        return digest.finalize().sha256
    }
}
