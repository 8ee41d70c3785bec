import Crypto
import Foundation
import NimbusCore
import Synchronization

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// The content-addressed image cache and the way images get into it: resolving references against the
/// catalogs, verified downloads, imports, and removal.
///
/// An entry is `<images>/<sha256>.img` plus `<sha256>.json`; it exists only complete and verified.
/// Downloads go to `<images>/.partial/` (kept across an interrupted run so the next one resumes), under
/// a lock per image in `<images>/.locks/` so two processes pulling the same image download it once.
public actor ImageStore {
    /// Which keyring checks Ubuntu's signed metadata.
    public enum Keyring: Sendable, Equatable {
        /// `NIMBUS_UBUNTU_KEYRING`, else /usr/share/keyrings/ubuntu-cloudimage-keyring.gpg when present,
        /// else none (unsigned `.json`, with a warning once).
        case automatic
        /// Never check signatures.
        case none
        /// This keyring file (as `gpg --export` writes it).
        case file(URL)
    }

    /// How the store behaves; the defaults suit the CLI.
    public struct Options: Sendable {
        /// Revalidate catalog metadata even when younger than `metadataMaxAge`.
        public var refresh = false
        /// Metadata younger than this is used without asking the mirror.
        public var metadataMaxAge: TimeInterval = 3600
        /// The keyring for Ubuntu's signed metadata.
        public var keyring: Keyring = .automatic
        /// Retries of metadata fetches and downloads.
        public var retry = RetryPolicy()
        /// Warnings for people (stale metadata, unchecked signatures); stderr by default.
        public var warn: @Sendable (String) -> Void = { message in
            FileHandle.standardError.write(Data((message + "\n").utf8))
        }
        /// Download and import progress.
        public var progress: @Sendable (TransferProgress) -> Void = { _ in }

        /// The CLI's defaults.
        public init() {}
    }

    /// Where the cache and the config live.
    public nonisolated let paths: NimbusPaths
    /// Where each catalog is fetched from.
    public nonisolated let mirrors: Mirrors
    let options: Options
    let environment: [String: String]
    static let warnedUnsigned = Mutex(false)

    /// A store over `paths`; mirrors come from config.yaml and the environment unless given.
    public init(
        paths: NimbusPaths = .resolve(), mirrors: Mirrors? = nil, options: Options = Options(),
        environment: [String: String] = ProcessInfo.processInfo.environment
    ) throws(NimbusError) {
        self.paths = paths
        if let mirrors {
            self.mirrors = mirrors
        } else {
            self.mirrors = try Mirrors.load(configFile: paths.configFile, environment: environment)
        }
        self.options = options
        self.environment = environment
    }

    var imagesFolder: URL { paths.images }
    var partialFolder: URL { paths.images.appending(path: ".partial", directoryHint: .isDirectory) }
    var locksFolder: URL { paths.images.appending(path: ".locks", directoryHint: .isDirectory) }

    func imageFile(_ sha256: String) -> URL { imagesFolder.appending(path: "\(sha256).img") }
    func metadataFile(_ sha256: String) -> URL { imagesFolder.appending(path: "\(sha256).json") }

    // MARK: References

    /// The user's aliases.
    public func aliases() throws(NimbusError) -> [String: String] {
        try ImageAliases(paths: paths).load()
    }

    /// Parses `text` with the user's aliases expanded; a bare name that is neither a catalog nor an alias
    /// but names a cached image (an import) becomes `.named`.
    public func reference(_ text: String, checksum: String? = nil) throws(NimbusError) -> ImageReference {
        let all = try aliases()
        do {
            return try ImageReference.parse(text, checksum: checksum, aliases: all)
        } catch {
            let target = all[text] ?? text
            if checksum == nil, !target.contains(":"), !target.contains("/"), try find(target) != nil {
                return .named(target)
            }
            throw error
        }
    }

    /// Sets (or with nil removes) an alias after checking that its target parses.
    public func setAlias(_ name: String, to target: String?) throws(NimbusError) {
        if let target {
            var all = try aliases()
            all[name] = nil
            do {
                _ = try ImageReference.parse(target, aliases: all)
            } catch {
                guard try find(target) != nil else { throw error }
            }
        } else if try aliases()[name] == nil {
            throw NimbusError(.notFound, "there is no image alias \"\(name)\": `nimbus image alias` lists them")
        }
        try ImageAliases(paths: paths).set(name, to: target)
    }

    // MARK: Catalogs

    var metadataCache: MetadataCache {
        MetadataCache(
            folder: paths.metadata, maxAge: options.metadataMaxAge, refresh: options.refresh, policy: options.retry,
            warn: options.warn)
    }

    func ubuntuKeyring() -> URL? {
        switch options.keyring {
        case .none: return nil
        case .file(let url): return url
        case .automatic:
            if let path = environment["NIMBUS_UBUNTU_KEYRING"], !path.isEmpty { return URL(fileURLWithPath: path) }
            let system = URL(fileURLWithPath: "/usr/share/keyrings/ubuntu-cloudimage-keyring.gpg")
            return FileManager.default.fileExists(atPath: system.path) ? system : nil
        }
    }

    func simpleStreams(stream: String) -> SimpleStreams {
        let keyring = ubuntuKeyring()
        if keyring == nil, options.keyring == .automatic {
            let first = Self.warnedUnsigned.withLock { warned in
                defer { warned = true }
                return !warned
            }
            if first {
                options.warn(
                    "warning: Ubuntu catalog signatures were not checked (no ubuntu-cloudimage-keyring.gpg); "
                        + "relying on HTTPS. Install ubuntu-keyring or set NIMBUS_UBUNTU_KEYRING to check them.")
            }
        }
        return SimpleStreams(mirror: mirrors.ubuntu, stream: stream, metadata: metadataCache, keyring: keyring)
    }

    /// What `reference` names now, from the (cached or fetched) catalog; no image is downloaded.
    public func resolve(_ reference: ImageReference, arch: Architecture = .host) async throws(NimbusError)
        -> RemoteImage
    {
        switch reference {
        case .catalog(.ubuntu, let release, let stream):
            return try await simpleStreams(stream: stream ?? "released").resolve(release: release, arch: arch)
        case .catalog(.debian, let release, _):
            return try await DebianCloud(mirror: mirrors.debian, metadata: metadataCache)
                .resolve(release: release ?? ImageReference.debianReleases[0].version, arch: arch)
        case .catalog(.fedoraCoreOS, let release, _):
            return try await FedoraCoreOS(mirror: mirrors.fedoraCoreOS, metadata: metadataCache)
                .resolve(stream: release ?? ImageReference.coreOSStreams[0], arch: arch)
        case .url(let url, let checksum):
            return RemoteImage(
                reference: url.absoluteString, distribution: nil, release: nil, codename: nil, version: nil, arch: arch,
                url: url, size: nil, checksum: checksum)
        case .file(let url):
            return RemoteImage(
                reference: url.absoluteString, distribution: nil, release: nil, codename: nil, version: nil, arch: arch,
                url: url, size: nil, checksum: nil)
        case .named(let name):
            let image = try info(name)
            return RemoteImage(
                reference: name, distribution: image.distribution, release: image.release, codename: image.codename,
                version: image.version, arch: image.arch ?? arch, url: image.url, size: image.size,
                checksum: Checksum(.sha256, image.sha256))
        }
    }

    /// The newest images each catalog offers for `arch`; a catalog that fails is reported as a warning
    /// and skipped.
    public func available(arch: Architecture = .host) async -> [AvailableImage] {
        var found: [RemoteImage] = []
        do {
            found += try await simpleStreams(stream: "released").list(arch: arch)
        } catch {
            options.warn("warning: Ubuntu catalog: \(error)")
        }
        let others: [ImageReference] =
            ImageReference.debianReleases.map { .catalog(.debian, release: $0.version, stream: nil) }
            + ImageReference.coreOSStreams.map { .catalog(.fedoraCoreOS, release: $0, stream: nil) }
        for reference in others {
            do {
                found.append(try await resolve(reference, arch: arch))
            } catch {
                options.warn("warning: \(reference): \(error)")
            }
        }
        let cached = (try? list()) ?? []
        return found.map { image in
            AvailableImage(image: image, cached: cached.contains { matches($0, image) })
        }
    }

    func matches(_ cached: CachedImage, _ remote: RemoteImage) -> Bool {
        if let key = remote.expectedCacheKey, cached.sha256 == key { return true }
        if let checksum = remote.checksum {
            switch checksum.algorithm {
            case .sha512: return cached.sha512 == checksum.hex
            case .sha256: return cached.sourceSHA256 == checksum.hex || cached.sha256 == checksum.hex
            }
        }
        return false
    }

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

    // MARK: Listing, lookup, removal

    /// The entry for `sha256`, when both its image and its metadata are there.
    public func entry(_ sha256: String) -> CachedImage? {
        guard FileManager.default.fileExists(atPath: imageFile(sha256).path),
            let data = try? Data(contentsOf: metadataFile(sha256)),
            var image = try? JSONDecoder.iso.decode(CachedImage.self, from: data)
        else { return nil }
        image.path = imageFile(sha256).path
        return image
    }

    /// Every cached image, newest first.
    public func list() throws(NimbusError) -> [CachedImage] {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: imagesFolder.path)) ?? []
        return names.filter { $0.hasSuffix(".json") }.compactMap { entry(String($0.dropLast(5))) }
            .sorted { $0.pulledAt > $1.pulledAt }
    }

    /// The cached image `text` names: a reference or alias it was pulled as, an import name, or a sha256
    /// prefix of at least 6 digits. The newest wins when several match.
    public func find(_ text: String) throws(NimbusError) -> CachedImage? {
        let all = try list()
        var candidates = [text]
        if let parsed = try? ImageReference.parse(text, aliases: (try? aliases()) ?? [:]) {
            candidates.append(parsed.description)
            if case .catalog(let distribution, nil, _) = parsed { candidates.append(distribution.rawValue) }
        }
        if let hit = all.first(where: { image in
            candidates.contains { image.references.contains($0) || image.name == $0 }
        }) {
            return hit
        }
        let lower = text.lowercased().replacingOccurrences(of: "sha256:", with: "")
        if lower.count >= 6, lower.allSatisfy(\.isHexDigit) {
            let hits = all.filter { $0.sha256.hasPrefix(lower) }
            if hits.count > 1 {
                throw NimbusError(.invalidArgument, "\"\(text)\" matches \(hits.count) images: give more digits")
            }
            return hits.first
        }
        return nil
    }

    /// Like `find`, but a miss is a `.notFound` error telling how to see what is there.
    public func info(_ text: String) throws(NimbusError) -> CachedImage {
        guard let image = try find(text) else {
            throw NimbusError(
                .notFound,
                "no cached image matches \"\(text)\": `nimbus image list` shows them, `nimbus image pull` fetches")
        }
        return image
    }

    /// Removes the cached image `text` names; refused while an instance's disk is backed by it.
    @discardableResult
    public func remove(_ text: String) throws(NimbusError) -> CachedImage {
        let image = try info(text)
        let users = try usage()[image.sha256] ?? []
        guard users.isEmpty else {
            throw NimbusError(
                .invalidState,
                "image \(image.reference) backs \(users.joined(separator: ", ")): delete those instances first")
        }
        try delete(image)
        return image
    }

    func delete(_ image: CachedImage) throws(NimbusError) {
        for file in [metadataFile(image.sha256), imageFile(image.sha256)] {
            guard unlink(file.path) == 0 || errno == ENOENT else { throw posixFailure("remove", file) }
        }
        AtomicFile.syncDirectory(imagesFolder)
    }

    /// Removes every cached image no instance's disk is backed by, and leftovers of interrupted
    /// downloads nobody is resuming; says which images were kept and why.
    public func prune() throws(NimbusError) -> PruneReport {
        let users = try usage()
        var report = PruneReport(removed: [], kept: [], freed: 0)
        for image in try list() {
            if let using = users[image.sha256], !using.isEmpty {
                report.kept.append(KeptImage(image: image, usedBy: using))
            } else {
                try delete(image)
                report.removed.append(image)
                report.freed += image.size
            }
        }
        let leftovers = (try? FileManager.default.contentsOfDirectory(atPath: partialFolder.path)) ?? []
        for name in leftovers {
            let key = String(name.prefix { $0 != "." })
            let lockURL = locksFolder.appending(path: "\(key).lock")
            // A held lock means another process is downloading into this file right now.
            if FileManager.default.fileExists(atPath: lockURL.path) {
                guard let lock = try? FileLock.attempt(lockURL) else { continue }
                lock.unlock()
            }
            let file = partialFolder.appending(path: name)
            if let size = try? FileManager.default.attributesOfItem(atPath: file.path)[.size] as? UInt64 {
                report.freed += size
            }
            try? FileManager.default.removeItem(at: file)
        }
        return report
    }

    /// Which cached images back which instance disks: every `*.qcow2` in each instance folder, its
    /// backing chain followed through the headers (DiskImage) to a `<sha256>.img` in the cache.
    public func usage() throws(NimbusError) -> [String: [String]] {
        var users: [String: [String]] = [:]
        let instances = paths.instances
        let names = (try? FileManager.default.contentsOfDirectory(atPath: instances.path)) ?? []
        let cachePath = imagesFolder.standardizedFileURL.resolvingSymlinksInPath().path
        for name in names.sorted() {
            let folder = instances.appending(path: name, directoryHint: .isDirectory)
            let files = (try? FileManager.default.contentsOfDirectory(atPath: folder.path)) ?? []
            for file in files.sorted() where file.hasSuffix(".qcow2") {
                var disk = folder.appending(path: file)
                for _ in 0..<16 {
                    guard let info = try? DiskImage.inspect(disk), let backing = info.backingPath(relativeTo: disk)
                    else {
                        break
                    }
                    let resolved = backing.resolvingSymlinksInPath()
                    if resolved.deletingLastPathComponent().path == cachePath, resolved.pathExtension == "img" {
                        let sha = resolved.deletingPathExtension().lastPathComponent
                        let label = "instance \(name) (\(file))"
                        if users[sha]?.contains(label) != true { users[sha, default: []].append(label) }
                        break
                    }
                    disk = resolved
                }
            }
        }
        return users
    }
}
