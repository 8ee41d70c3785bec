import CLibvirt
import Crypto
import Foundation
import NimbusCore
import NimbusDisks
import NimbusMachines

/// A machine's disks in a libvirt storage pool, on whichever host the daemon runs: the same code path for
/// `qemu:///system` and `qemu+ssh://host/system`, since the files travel through libvirt's streams and never
/// through a shared filesystem.
///
/// - The pool (`nimbus` unless configured) is a `dir` pool, defined, built and started when absent.
/// - The base image is uploaded once per image per host, as `nimbus-base-<sha256 prefix>.<format>`: first
///   under a temporary name, then read back and checked against its SHA-256, and only then copied to its
///   final name by the daemon (`virStorageVolCreateXMLFrom`, which is `qemu-img convert` on that host: libvirt
///   has no rename); an empty marker volume `<name>.complete` made after the copy says it finished, so a
///   copy cut short by a dying daemon is never taken for the image. A failed upload deletes its temporary
///   volume; one left by a killed Nimbus is deleted an hour later.
/// - The instance's overlay is a qcow2 volume created in the pool with `<backingStore>` on the base volume;
///   the seed ISO (or Ignition config) and scratch disks are uploaded as volumes at every start.
/// - What an instance owns is listed in `libvirt-storage.json` in its machine folder, so `delete --purge`
///   deletes exactly those volumes and leaves the rest of the pool, base images included.
///
/// References: https://libvirt.org/formatstorage.html, https://libvirt.org/html/libvirt-libvirt-storage.html,
/// https://libvirt.org/html/libvirt-libvirt-stream.html.
public struct LibvirtStorage: Sendable {
    /// The pool Nimbus keeps its volumes in unless told otherwise.
    public static let defaultPool = "nimbus"
    /// Where a pool Nimbus creates keeps its files.
    public static let defaultTargetRoot = "/var/lib/libvirt/images"

    /// What a machine folder records about the machine's volumes.
    struct Record: Codable, Sendable, Hashable {
        var uri: String
        var pool: String
        /// Random, so two Nimbus installations' instances of the same name on one host never share a disk.
        var token: String
        /// Every volume the machine owns (never the base image, which instances share).
        var volumes: [String]
        /// The launch's overlay exists: from now on a missing overlay is an error, never silently made anew.
        var diskCreated: Bool
        /// The overlays made since for other roots (`MachineConfig.Disk.volumeKey`), by key; the same rule holds.
        var rootDisks: [String: String]?
        /// The key of the root the machine last started with; nil for the launch's.
        var rootKey: String?

        /// The overlay volume of the root with `key` (nil: the launch's).
        func diskName(domain: String, key: String?) -> String {
            key.map { "\(domain)-\(token)-disk-\($0).qcow2" } ?? "\(domain)-\(token)-disk.qcow2"
        }

        /// Whether the overlay of the root with `key` was made.
        func created(_ key: String?) -> Bool {
            key.map { rootDisks?[$0] != nil } ?? diskCreated
        }
    }

    static func recordFile(_ directory: MachineDirectory) -> URL {
        directory.url.appending(path: "libvirt-storage.json")
    }

    static func record(_ directory: MachineDirectory) -> Record? {
        guard let data = try? Data(contentsOf: recordFile(directory)) else { return nil }
        return try? JSONDecoder().decode(Record.self, from: data)
    }

    static func save(_ record: Record, in directory: MachineDirectory) throws(NimbusError) {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .prettyPrinted]
        do {
            try AtomicFile.write(try encoder.encode(record), to: recordFile(directory), permissions: 0o600)
        } catch {
            throw NimbusError(.io, "could not write \(recordFile(directory).path)", cause: error)
        }
    }

    /// Where a started machine's files are on the daemon's host.
    struct Placement: Sendable {
        /// The config with every disk, seed and Ignition path replaced by its volume's path in the pool.
        var config: MachineConfig
        /// The UEFI variable store on the daemon's host, when it is not the machine folder's.
        var nvram: String?
    }

    let connection: LibvirtConnection
    let poolName: String
    /// A uid:gid the volumes are made for (local daemon, QEMU run as the caller); nil keeps libvirt's.
    let owner: LibvirtDomainXML.Owner?
    let progress: @Sendable (String) -> Void

    init(
        connection: LibvirtConnection, pool: String, owner: LibvirtDomainXML.Owner?,
        progress: @escaping @Sendable (String) -> Void
    ) {
        self.connection = connection
        self.poolName = pool
        self.owner = owner
        self.progress = progress
    }

    var uri: String { connection.uri }

    // MARK: placing a machine

    /// Puts every file of `config` into the pool and returns the config that points at the volumes.
    func place(_ config: MachineConfig, in directory: MachineDirectory, remote: Bool) async throws(NimbusError)
        -> Placement
    {
        var needsPool = !config.disks.isEmpty || (remote && config.firmware != .bios)
        if case .noCloud = config.seed { needsPool = true }
        if case .ignition = config.seed { needsPool = true }
        // A machine with no file to place (a firmware-only test machine) never touches storage.
        guard needsPool || Self.record(directory) != nil else { return Placement(config: config, nvram: nil) }
        let pool = try ensurePool()
        var record =
            Self.record(directory)
            ?? Record(
                uri: uri, pool: poolName, token: String(UUID().uuidString.prefix(6)).lowercased(), volumes: [],
                diskCreated: false)
        guard record.uri == uri, record.pool == poolName else {
            throw NimbusError(
                .invalidState,
                "machine \(config.name) keeps its disks in pool \(record.pool) at \(record.uri), not in \(poolName) at \(uri): start it with the URI and pool it was launched with"
            )
        }
        let prefix = "\(LibvirtDomainXML.domainName(for: config.name))-\(record.token)"
        func own(_ name: String) throws(NimbusError) {
            guard !record.volumes.contains(name) else { return }
            record.volumes.append(name)
            // Recorded before the volume exists, so a launch killed half-way leaves nothing `purge` misses.
            try Self.save(record, in: directory)
        }
        var placed = config
        for (index, disk) in config.disks.enumerated() {
            let local = URL(fileURLWithPath: disk.path)
            if let name = disk.dataVolume {
                // A data volume: made once from the local file (its data, if a QEMU instance wrote any), then
                // the pool's copy is the volume; not the machine's, so never in its record.
                if let existing = try pool.volume(named: name) {
                    placed.disks[index].path = try existing.path()
                } else {
                    placed.disks[index].path = try await replaceVolume(name, with: local, format: disk.format, in: pool)
                }
            } else if index == 0, disk.format == .qcow2, let backing = try Self.backing(of: local) {
                let name = record.diskName(domain: LibvirtDomainXML.domainName(for: config.name), key: disk.volumeKey)
                try own(name)
                if record.rootKey != disk.volumeKey {
                    record.rootKey = disk.volumeKey
                    try Self.save(record, in: directory)
                }
                let volume: LibvirtVolume
                if let existing = try pool.volume(named: name) {
                    volume = existing
                } else {
                    guard !record.created(disk.volumeKey) else {
                        throw NimbusError(
                            .notFound,
                            "the disk of \(config.name) (volume \(name) in pool \(poolName) at \(uri)) is gone: its data cannot be recovered; `nimbus delete --purge \(config.name)` and launch it again"
                        )
                    }
                    let base = try await baseVolume(backing.file, format: backing.format, in: pool)
                    volume = try pool.createOverlay(
                        name, size: backing.virtualSize, backing: base.path(), format: backing.format, owner: owner)
                    if let key = disk.volumeKey {
                        record.rootDisks = (record.rootDisks ?? [:]).merging([key: name]) { _, new in new }
                    } else {
                        record.diskCreated = true
                    }
                    try Self.save(record, in: directory)
                }
                placed.disks[index].path = try volume.path()
            } else {
                // A scratch disk (made anew by every start) or a disk without backing file: sent as it is.
                let name = "\(prefix)-disk\(index).\(disk.format.rawValue)"
                try own(name)
                placed.disks[index].path = try await replaceVolume(name, with: local, format: disk.format, in: pool)
            }
        }
        switch config.seed {
        case .noCloud(let iso):
            let name = "\(prefix)-seed.iso"
            try own(name)
            placed.seed = .noCloud(
                iso: try await replaceVolume(name, with: URL(fileURLWithPath: iso), format: .raw, in: pool))
        case .ignition(let file):
            let name = "\(prefix)-ignition.json"
            try own(name)
            placed.seed = .ignition(
                config: try await replaceVolume(name, with: URL(fileURLWithPath: file), format: .raw, in: pool))
        case .none, .noCloudNet:
            break
        }
        var nvram: String?
        if remote, case .uefi = config.firmware {
            // libvirt copies the template into this file at first start; in the pool, purge deletes it.
            let name = "\(prefix)-VARS.fd"
            try own(name)
            nvram = try pool.targetPath() + "/" + name
        }
        return Placement(config: placed, nvram: nvram)
    }

    /// The base image and format an overlay names, with the overlay's virtual size; nil for a disk without
    /// backing file.
    static func backing(of overlay: URL) throws(NimbusError) -> (
        file: URL, format: MachineConfig.DiskFormat, virtualSize: UInt64
    )? {
        let info = try DiskImage.inspect(overlay)
        guard let file = info.backingFile else { return nil }
        let url =
            file.hasPrefix("/")
            ? URL(fileURLWithPath: file) : overlay.deletingLastPathComponent().appending(path: file)
        let format = MachineConfig.DiskFormat(rawValue: info.backingFormat ?? "") ?? .qcow2
        return (url, format, info.virtualSize)
    }

    /// The overlay volume of the machine `record` describes, in its pool; nil before it was made (or once it
    /// is gone).
    static func diskVolume(_ record: Record, domain: String) throws(NimbusError) -> LibvirtVolume? {
        guard record.created(record.rootKey) else { return nil }
        let connection = try LibvirtConnection(uri: record.uri)
        let storage = LibvirtStorage(connection: connection, pool: record.pool, owner: nil) { _ in }
        return try storage.existingPool()?.volume(named: record.diskName(domain: domain, key: record.rootKey))
    }

    /// Deletes the root overlays of `directory`'s machine whose keys are not in `keys`, and forgets them.
    static func deleteRootDisks(of directory: MachineDirectory, domain: String, keeping keys: Set<String?>)
        throws(NimbusError)
    {
        guard var record = record(directory) else { return }
        let unused = ([nil] + (record.rootDisks ?? [:]).keys.map { Optional($0) }).filter { key in
            !keys.contains(key) && record.created(key)
        }
        guard !unused.isEmpty else { return }
        let connection = try LibvirtConnection(uri: record.uri)
        let storage = LibvirtStorage(connection: connection, pool: record.pool, owner: nil) { _ in }
        let pool = try storage.existingPool()
        pool?.refresh()
        for key in unused {
            let name = record.diskName(domain: domain, key: key)
            try pool?.volume(named: name)?.delete()
            record.volumes.removeAll { $0 == name }
            if let key { record.rootDisks?[key] = nil } else { record.diskCreated = false }
            try save(record, in: directory)
        }
    }

    /// Deletes every volume `directory`'s machine owns, and the record; the pool and base images stay.
    static func deleteVolumes(of directory: MachineDirectory) throws(NimbusError) {
        guard let record = record(directory) else { return }
        let connection = try LibvirtConnection(uri: record.uri)
        let storage = LibvirtStorage(connection: connection, pool: record.pool, owner: nil) { _ in }
        if let pool = try storage.existingPool() {
            pool.refresh()
            for name in record.volumes {
                try pool.volume(named: name)?.delete()
            }
        }
        try? FileManager.default.removeItem(at: recordFile(directory))
    }

    // MARK: the pool

    func existingPool() throws(NimbusError) -> LibvirtPool? {
        guard let pointer = libvirt.virStoragePoolLookupByName(connection.pointer, poolName) else {
            let error = LibvirtError.last("virStoragePoolLookupByName")
            if error.matches(VIR_ERR_NO_STORAGE_POOL) { return nil }
            throw NimbusError(
                .network, "libvirt at \(uri) could not look up storage pool \(poolName): \(error.message)",
                cause: error)
        }
        return LibvirtPool(pointer, connection: connection, name: poolName)
    }

    /// The pool, started; defined (a `dir` pool under /var/lib/libvirt/images), built and started when absent.
    func ensurePool() throws(NimbusError) -> LibvirtPool {
        let pool: LibvirtPool
        if let existing = try existingPool() {
            pool = existing
        } else {
            // A session daemon runs as the user, who cannot write /var/lib/libvirt: libvirt's own per-user place.
            let session = URLComponents(string: uri)?.path == "/session" && LibvirtRemote.host(of: uri) == nil
            let root =
                session
                ? FileManager.default.homeDirectoryForCurrentUser.path + "/.local/share/libvirt/images"
                : Self.defaultTargetRoot
            let target = "\(root)/\(poolName)"
            let xml = """
                <pool type='dir'>
                  <name>\(LibvirtDomainXML.escape(poolName))</name>
                  <target><path>\(LibvirtDomainXML.escape(target))</path></target>
                </pool>
                """
            guard let pointer = libvirt.virStoragePoolDefineXML(connection.pointer, xml, 0) else {
                let error = LibvirtError.last("virStoragePoolDefineXML")
                throw NimbusError(
                    .processFailed,
                    "libvirt at \(uri) could not define storage pool \(poolName) in \(target): \(error.message)",
                    cause: error)
            }
            pool = LibvirtPool(pointer, connection: connection, name: poolName)
            progress("created libvirt storage pool \(poolName) (\(target)) at \(uri)")
            try pool.call("build", "virStoragePoolBuild") { libvirt.virStoragePoolBuild($0, 0) }
            _ = libvirt.virStoragePoolSetAutostart(pool.pointer, 1)
            libvirt.virResetLastError()
        }
        if libvirt.virStoragePoolIsActive(pool.pointer) != 1 {
            try pool.call("start", "virStoragePoolCreate") { libvirt.virStoragePoolCreate($0, 0) }
        }
        let type = pool.xml().range(of: "<pool type='([a-z]+)'", options: .regularExpression).map {
            String(pool.xml()[$0]).dropFirst(12).dropLast(1)
        }
        if let type, !["dir", "fs", "netfs"].contains(String(type)) {
            throw NimbusError(
                .unsupported,
                "storage pool \(poolName) at \(uri) is a \(type) pool: Nimbus needs a directory pool (dir, fs or netfs) for qcow2 overlays; choose another pool"
            )
        }
        pool.refresh()
        return pool
    }

    // MARK: helpers

    static func fileSize(_ file: URL) throws(NimbusError) -> UInt64 {
        var status = stat()
        guard stat(file.path, &status) == 0 else {
            throw NimbusError(.notFound, "cannot read \(file.path): \(String(cString: strerror(errno)))")
        }
        return UInt64(status.st_size)
    }

    /// The SHA-256 of `file`: from its name in Nimbus's content-addressed cache (`<sha256>.img`, verified on
    /// download), else computed.
    static func sha256(of file: URL) async throws(NimbusError) -> String {
        let stem = file.deletingPathExtension().lastPathComponent
        if stem.count == 64, stem.allSatisfy(\.isHexDigit) { return stem.lowercased() }
        return try await offload { () throws(NimbusError) -> String in
            guard let handle = FileHandle(forReadingAtPath: file.path) else {
                throw NimbusError(.notFound, "cannot read \(file.path)")
            }
            defer { try? handle.close() }
            var hasher = SHA256()
            while let chunk = try? handle.read(upToCount: 1 << 20), !chunk.isEmpty { hasher.update(data: chunk) }
            return hex(hasher.finalize())
        }
    }

    static func hex(_ digest: SHA256.Digest) -> String { digest.map { String(format: "%02x", $0) }.joined() }

    /// Runs blocking libvirt stream calls on a thread of their own, not on the cooperative pool.
    static func offload<T: Sendable>(_ body: @escaping @Sendable () throws(NimbusError) -> T) async throws(NimbusError)
        -> T
    {
        let result = await withCheckedContinuation {
            (continuation: CheckedContinuation<Result<T, NimbusError>, Never>) in
            Thread.detachNewThread {
                do throws(NimbusError) {
                    continuation.resume(returning: .success(try body()))
                } catch {
                    continuation.resume(returning: .failure(error))
                }
            }
        }
        return try result.get()
    }
}
