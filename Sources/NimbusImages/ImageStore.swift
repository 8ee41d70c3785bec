import Crypto
import Foundation
import NimbusCore
import NimbusDisks
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
        /// Ask no mirror anything: catalog metadata comes from the copies cached on disk, of any age, and a
        /// catalog with none cached resolves nothing (`nimbus list` shows image updates this way).
        public var offline = false
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
        /// The disk files that cached images may back, each with its owner for people (`instance web
        /// (disk.qcow2)`): given by the layer that keeps them (the instance layer's `InstanceStore.disks`), so
        /// this store knows no folder but its own. `remove` and `prune` keep what they back.
        public var disks: @Sendable () -> [(owner: String, file: URL)] = { [] }

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
            warn: options.warn, offline: options.offline)
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

    /// Which cached images back which of `Options.disks`: each disk's backing chain followed through the
    /// headers (DiskImage) to a `<sha256>.img` in the cache; sha256 → owners.
    public func usage() throws(NimbusError) -> [String: [String]] {
        var users: [String: [String]] = [:]
        let cachePath = imagesFolder.standardizedFileURL.resolvingSymlinksInPath().path
        for (owner, file) in options.disks() {
            var disk = file
            for _ in 0..<16 {
                guard let info = try? DiskImage.inspect(disk), let backing = info.backingPath(relativeTo: disk) else {
                    break
                }
                let resolved = backing.resolvingSymlinksInPath()
                if resolved.deletingLastPathComponent().path == cachePath, resolved.pathExtension == "img" {
                    let sha = resolved.deletingPathExtension().lastPathComponent
                    if users[sha]?.contains(owner) != true { users[sha, default: []].append(owner) }
                    break
                }
                disk = resolved
            }
        }
        return users
    }
}
