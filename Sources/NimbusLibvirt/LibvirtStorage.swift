import CLibvirt
import Crypto
import Foundation
import NimbusCore
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
        /// The overlay exists: from now on a missing overlay is an error, never silently made anew.
        var diskCreated: Bool
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
            if index == 0, disk.format == .qcow2, let backing = try Self.backing(of: local) {
                let name = "\(prefix)-disk.qcow2"
                try own(name)
                let volume: LibvirtVolume
                if let existing = try pool.volume(named: name) {
                    volume = existing
                } else {
                    guard !record.diskCreated else {
                        throw NimbusError(
                            .notFound,
                            "the disk of \(config.name) (volume \(name) in pool \(poolName) at \(uri)) is gone: its data cannot be recovered; `nimbus delete --purge \(config.name)` and launch it again"
                        )
                    }
                    let base = try await baseVolume(backing.file, format: backing.format, in: pool)
                    volume = try pool.createOverlay(
                        name, size: backing.virtualSize, backing: base.path(), format: backing.format, owner: owner)
                    record.diskCreated = true
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
        guard record.diskCreated else { return nil }
        let connection = try LibvirtConnection(uri: record.uri)
        let storage = LibvirtStorage(connection: connection, pool: record.pool, owner: nil) { _ in }
        return try storage.existingPool()?.volume(named: "\(domain)-\(record.token)-disk.qcow2")
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

    // MARK: the base image

    /// The base volume for `image` on this host: found by the SHA-256 in its name, or uploaded and verified.
    func baseVolume(_ image: URL, format: MachineConfig.DiskFormat, in pool: LibvirtPool) async throws(NimbusError)
        -> LibvirtVolume
    {
        let digest = try await Self.sha256(of: image)
        let name = Self.baseVolumeName(sha256: digest, format: format)
        if let complete = try await completeBase(name, in: pool) { return complete }
        pool.deleteStaleUploads(of: name)

        let size = try Self.fileSize(image)
        // The temporary volume and its copy under the final name exist together for a moment.
        let needed = size * 2
        let available = pool.available()
        if let available, available < needed {
            throw NimbusError(
                .unsupported,
                "storage pool \(poolName) at \(uri) has \(ByteSize(bytes: available).humanReadable) free, but uploading base image \(image.lastPathComponent) (\(ByteSize(bytes: size).humanReadable)) needs \(ByteSize(bytes: needed).humanReadable) while it is verified and moved into place: free space in the pool's directory (\((try? pool.targetPath()) ?? "?")), or choose another pool"
            )
        }
        let temporary = "\(name).part-\(UUID().uuidString.prefix(8).lowercased())"
        progress(
            "uploading base image \(image.lastPathComponent) (\(ByteSize(bytes: size).humanReadable)) to pool \(poolName) at \(uri)"
        )
        // Declared in the image's own format: the copy below converts from the format libvirt has on record,
        // and libvirt re-probes every volume of the pool in a thread of its own after an upload ends (unless
        // another copy is running in the pool), so a volume declared raw holding qcow2 is raw or qcow2
        // depending on that thread, and a raw one is copied into a qcow2 whose disk is the qcow2 file's bytes.
        let part = try pool.createVolume(temporary, size: size, format: format, mode: 0o644, owner: owner)
        do throws(NimbusError) {
            let sent = try await Self.offload { () throws(NimbusError) -> String in
                try part.upload(image, sparse: false, hashing: true) ?? ""
            }
            guard sent == digest else {
                throw NimbusError(
                    .integrity,
                    "base image \(image.path) changed while it was uploaded (SHA-256 \(digest) before, \(sent) sent): run the command again"
                )
            }
            let arrived = try await Self.offload { () throws(NimbusError) -> String in
                try part.downloadDigest(size: size)
            }
            guard arrived == digest else {
                throw NimbusError(
                    .integrity,
                    "the base image uploaded to pool \(poolName) at \(uri) does not match (SHA-256 \(digest) sent, \(arrived) arrived): the upload was removed; run the command again"
                )
            }
            let virtualSize = try DiskImage.inspect(image).virtualSize
            let final = try await Self.offload { () throws(NimbusError) -> LibvirtVolume in
                try pool.clone(part, as: name, capacity: virtualSize, format: format, mode: 0o644, owner: owner)
            }
            // The marker says the copy finished: a daemon that dies while copying leaves a file without one.
            _ = try pool.createVolume(Self.markerName(name), size: 0, format: .raw, mode: 0o644, owner: owner)
            try? part.delete()
            progress("base image verified on arrival (SHA-256 \(digest.prefix(16))...) as \(name)")
            return final
        } catch {
            try? part.delete()
            // Another Nimbus process may have put the same image in place meanwhile.
            if let complete = try? await completeBase(name, in: pool) { return complete }
            if error.message.contains("No space left") || error.message.contains("ENOSPC") {
                throw NimbusError(
                    .unsupported,
                    "storage pool \(poolName) at \(uri) ran out of space while base image \(image.lastPathComponent) (\(ByteSize(bytes: size).humanReadable), \(ByteSize(bytes: needed).humanReadable) needed) was uploaded: the partial volume was removed; free space in the pool or choose another pool",
                    cause: error)
            }
            throw error
        }
    }

    /// The base volume `name` when its copy finished (its marker exists); nil when there is none.
    ///
    /// A volume without marker is a copy that never finished (a daemon that died mid-copy), one another Nimbus
    /// is making right now, or one whose marker is a moment away. So it is watched first: libvirt refuses to
    /// delete a volume it is still building, which tells a copy in progress (waited for) from a leftover,
    /// and a leftover is deleted only after `markerGrace` without a marker.
    func completeBase(_ name: String, in pool: LibvirtPool) async throws(NimbusError) -> LibvirtVolume? {
        let deadline = ContinuousClock.now + .seconds(1800)
        var unmarkedSince = ContinuousClock.now
        var told = false
        while true {
            guard let volume = try pool.volume(named: name) else { return nil }
            if try pool.volume(named: Self.markerName(name)) != nil { return volume }
            if ContinuousClock.now - unmarkedSince >= Self.markerGrace {
                if libvirt.virStorageVolDelete(volume.pointer, 0) == 0 {
                    progress("deleted \(name) from pool \(poolName): a copy that never finished")
                    return nil
                }
                libvirt.virResetLastError()
                // Still being built by another Nimbus: wait for it, then give its marker the grace again.
                if !told { progress("waiting for another Nimbus copying \(name) into pool \(poolName)") }
                told = true
                unmarkedSince = ContinuousClock.now
            }
            guard ContinuousClock.now < deadline else {
                throw NimbusError(
                    .timeout,
                    "base image volume \(name) in pool \(poolName) at \(uri) has been copied by another Nimbus for 30 minutes: run the command again later, or delete that volume if nothing copies it"
                )
            }
            try? await Task.sleep(for: .seconds(1))
        }
    }

    /// How long a base volume may lack its marker before it is taken for a leftover.
    static let markerGrace: Duration = .seconds(10)

    /// The empty volume whose existence says base volume `name` is complete.
    static func markerName(_ name: String) -> String { "\(name).complete" }

    /// `nimbus-base-<first 16 hex digits of the SHA-256>.<format>`.
    static func baseVolumeName(sha256: String, format: MachineConfig.DiskFormat) -> String {
        "nimbus-base-\(sha256.prefix(16)).\(format.rawValue)"
    }

    /// Deletes volume `name` if it exists and uploads `file` under that name; returns the volume's path.
    func replaceVolume(_ name: String, with file: URL, format: MachineConfig.DiskFormat, in pool: LibvirtPool)
        async throws(NimbusError) -> String
    {
        try pool.volume(named: name)?.delete()
        let size = try Self.fileSize(file)
        if let available = pool.available(), available < size {
            throw NimbusError(
                .unsupported,
                "storage pool \(poolName) at \(uri) has \(ByteSize(bytes: available).humanReadable) free, but \(file.lastPathComponent) needs \(ByteSize(bytes: size).humanReadable): free space in the pool's directory, or choose another pool"
            )
        }
        let volume = try pool.createVolume(name, size: size, format: format, mode: 0o600, owner: owner)
        do throws(NimbusError) {
            _ = try await Self.offload { () throws(NimbusError) -> String? in
                try volume.upload(file, sparse: true, hashing: false)
            }
        } catch {
            try? volume.delete()
            throw error
        }
        return try volume.path()
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

/// A storage pool handle (`virStoragePoolPtr`), freed when released.
///
/// `@unchecked Sendable`: libvirt objects are thread-safe (see `LibvirtConnection`), the pointer never
/// changes, and the handle keeps its connection alive.
final class LibvirtPool: @unchecked Sendable {
    let pointer: virStoragePoolPtr
    let connection: LibvirtConnection
    let name: String

    init(_ pointer: virStoragePoolPtr, connection: LibvirtConnection, name: String) {
        self.pointer = pointer
        self.connection = connection
        self.name = name
    }

    deinit { _ = libvirt.virStoragePoolFree(pointer) }

    func call(_ action: String, _ function: String, _ body: (virStoragePoolPtr) -> Int32) throws(NimbusError) {
        guard body(pointer) == 0 else {
            let error = LibvirtError.last(function)
            throw NimbusError(
                .processFailed,
                "libvirt at \(connection.uri) could not \(action) storage pool \(name): \(error.message)",
                cause: error)
        }
    }

    /// Re-reads the pool's directory, so volumes made outside the API (the UEFI variable store) are seen.
    func refresh() {
        if libvirt.virStoragePoolRefresh(pointer, 0) != 0 { libvirt.virResetLastError() }
    }

    func xml() -> String {
        guard let text = libvirt.virStoragePoolGetXMLDesc(pointer, 0) else {
            libvirt.virResetLastError()
            return ""
        }
        defer { free(text) }
        return String(cString: text)
    }

    /// The pool's directory on the daemon's host.
    func targetPath() throws(NimbusError) -> String {
        let text = xml()
        guard let start = text.range(of: "<target>"), let open = text[start.upperBound...].range(of: "<path>"),
            let close = text[open.upperBound...].range(of: "</path>")
        else {
            throw NimbusError(.processFailed, "storage pool \(name) at \(connection.uri) has no target path")
        }
        return LibvirtDomainXML.unescape(String(text[open.upperBound..<close.lowerBound]))
    }

    /// Free bytes, as the daemon sees its filesystem; nil when it cannot tell.
    func available() -> UInt64? {
        var info = virStoragePoolInfo()
        guard libvirt.virStoragePoolGetInfo(pointer, &info) == 0 else {
            libvirt.virResetLastError()
            return nil
        }
        return info.available
    }

    /// Deletes temporary uploads of base volume `name` (`name.part-*`) last written over an hour ago: left by a
    /// Nimbus killed while uploading. (A live upload writes every moment; the hour allows for clock skew.)
    func deleteStaleUploads(of name: String) {
        var list: UnsafeMutablePointer<virStorageVolPtr?>?
        let count = libvirt.virStoragePoolListAllVolumes(pointer, &list, 0)
        guard count > 0, let list else {
            libvirt.virResetLastError()
            return
        }
        defer { free(list) }
        let now = Date().timeIntervalSince1970
        for index in 0..<Int(count) {
            guard let volume = list[index] else { continue }
            defer { _ = libvirt.virStorageVolFree(volume) }
            guard let cName = libvirt.virStorageVolGetName(volume), String(cString: cName).hasPrefix("\(name).part-"),
                let text = libvirt.virStorageVolGetXMLDesc(volume, 0)
            else { continue }
            let xml = String(cString: text)
            free(text)
            guard let open = xml.range(of: "<mtime>"), let close = xml[open.upperBound...].range(of: "</mtime>"),
                let mtime = Double(xml[open.upperBound..<close.lowerBound]), now - mtime > 3600
            else { continue }
            if libvirt.virStorageVolDelete(volume, 0) != 0 { libvirt.virResetLastError() }
        }
    }

    func volume(named volume: String) throws(NimbusError) -> LibvirtVolume? {
        guard let pointer = libvirt.virStorageVolLookupByName(pointer, volume) else {
            let error = LibvirtError.last("virStorageVolLookupByName")
            if error.matches(VIR_ERR_NO_STORAGE_VOL) { return nil }
            throw NimbusError(
                .network,
                "libvirt at \(connection.uri) could not look up volume \(volume) in pool \(name): \(error.message)",
                cause: error)
        }
        return LibvirtVolume(pointer, pool: self, name: volume)
    }

    /// qcow2 v3 (libvirt 9.0 makes v2, `compat=0.10`, unless told).
    static func compat(_ format: MachineConfig.DiskFormat) -> String { format == .qcow2 ? "<compat>1.1</compat>" : "" }

    static func permissions(mode: Int, owner: LibvirtDomainXML.Owner?) -> String {
        let ids = owner.map { "<owner>\($0.uid)</owner><group>\($0.gid)</group>" } ?? ""
        return "<permissions><mode>0\(String(mode, radix: 8))</mode>\(ids)</permissions>"
    }

    /// An empty volume of `size` bytes (sparse), to upload into.
    func createVolume(
        _ volume: String, size: UInt64, format: MachineConfig.DiskFormat, mode: Int, owner: LibvirtDomainXML.Owner?
    ) throws(NimbusError) -> LibvirtVolume {
        try create(
            volume,
            xml: """
                <volume>
                  <name>\(LibvirtDomainXML.escape(volume))</name>
                  <capacity unit='bytes'>\(size)</capacity>
                  <allocation unit='bytes'>0</allocation>
                  <target><format type='\(format.rawValue)'/>\(Self.permissions(mode: mode, owner: owner))</target>
                </volume>
                """)
    }

    /// A qcow2 overlay of `size` bytes on the volume at `backing`.
    func createOverlay(
        _ volume: String, size: UInt64, backing: String, format: MachineConfig.DiskFormat,
        owner: LibvirtDomainXML.Owner?
    ) throws(NimbusError) -> LibvirtVolume {
        try create(
            volume,
            xml: """
                <volume>
                  <name>\(LibvirtDomainXML.escape(volume))</name>
                  <capacity unit='bytes'>\(size)</capacity>
                  <target><format type='qcow2'/>\(Self.compat(.qcow2))\(Self.permissions(mode: 0o600, owner: owner))</target>
                  <backingStore>
                    <path>\(LibvirtDomainXML.escape(backing))</path>
                    <format type='\(format.rawValue)'/>
                  </backingStore>
                </volume>
                """)
    }

    private func create(_ volume: String, xml: String) throws(NimbusError) -> LibvirtVolume {
        guard let created = libvirt.virStorageVolCreateXML(pointer, xml, 0) else {
            throw createError(volume, LibvirtError.last("virStorageVolCreateXML"))
        }
        return LibvirtVolume(created, pool: self, name: volume)
    }

    /// A copy of `source` named `volume`, made by the daemon on its host. libvirt reads the source in the
    /// format it probes (`qemu-img convert` from qcow2 to `format`), so `capacity` is the virtual size.
    func clone(
        _ source: LibvirtVolume, as volume: String, capacity: UInt64, format: MachineConfig.DiskFormat, mode: Int,
        owner: LibvirtDomainXML.Owner?
    ) throws(NimbusError) -> LibvirtVolume {
        let xml = """
            <volume>
              <name>\(LibvirtDomainXML.escape(volume))</name>
              <capacity unit='bytes'>\(capacity)</capacity>
              <target><format type='\(format.rawValue)'/>\(Self.compat(format))\(Self.permissions(mode: mode, owner: owner))</target>
            </volume>
            """
        guard let created = libvirt.virStorageVolCreateXMLFrom(pointer, xml, source.pointer, 0) else {
            throw createError(volume, LibvirtError.last("virStorageVolCreateXMLFrom"))
        }
        return LibvirtVolume(created, pool: self, name: volume)
    }

    private func createError(_ volume: String, _ error: LibvirtError) -> NimbusError {
        NimbusError(
            .processFailed,
            "libvirt at \(connection.uri) could not create volume \(volume) in storage pool \(name): \(error.message)",
            cause: error)
    }
}

/// A storage volume handle (`virStorageVolPtr`), freed when released.
///
/// `@unchecked Sendable` for the same reason as `LibvirtPool`.
final class LibvirtVolume: @unchecked Sendable {
    let pointer: virStorageVolPtr
    let pool: LibvirtPool
    let name: String

    init(_ pointer: virStorageVolPtr, pool: LibvirtPool, name: String) {
        self.pointer = pointer
        self.pool = pool
        self.name = name
    }

    deinit { _ = libvirt.virStorageVolFree(pointer) }

    var uri: String { pool.connection.uri }

    /// lseek's SEEK_DATA and SEEK_HOLE (Linux, <unistd.h> with _GNU_SOURCE, which Glibc's module leaves out).
    static let seekData: Int32 = 3
    static let seekHole: Int32 = 4

    /// The volume's file on the daemon's host.
    func path() throws(NimbusError) -> String {
        guard let text = libvirt.virStorageVolGetPath(pointer) else {
            let error = LibvirtError.last("virStorageVolGetPath")
            throw NimbusError(
                .processFailed, "libvirt at \(uri) gave no path for volume \(name): \(error.message)", cause: error)
        }
        defer { free(text) }
        return String(cString: text)
    }

    /// The bytes the volume takes on its host (its file's allocated blocks for a directory pool), as libvirt
    /// reads them now.
    func allocation() throws(NimbusError) -> UInt64 {
        var info = virStorageVolInfo()
        guard libvirt.virStorageVolGetInfo(pointer, &info) == 0 else {
            let error = LibvirtError.last("virStorageVolGetInfo")
            throw NimbusError(
                .processFailed, "libvirt at \(uri) could not read the size of volume \(name): \(error.message)",
                cause: error)
        }
        return info.allocation
    }

    func delete() throws(NimbusError) {
        guard libvirt.virStorageVolDelete(pointer, 0) == 0 else {
            let error = LibvirtError.last("virStorageVolDelete")
            throw NimbusError(
                .processFailed,
                "libvirt at \(uri) could not delete volume \(name) from pool \(pool.name): \(error.message)",
                cause: error)
        }
    }

    private func failure(_ what: String, _ function: String, _ stream: virStreamPtr) -> NimbusError {
        let error = LibvirtError.last(function)
        _ = libvirt.virStreamAbort(stream)
        libvirt.virResetLastError()
        return NimbusError(
            .processFailed, "\(what) volume \(name) in pool \(pool.name) at \(uri) failed: \(error.message)",
            cause: error)
    }

    /// Sends `file` into the volume through a libvirt stream (`virStorageVolUpload`). Sparse: holes travel as
    /// hole lengths (`virStreamSendHole`), not as zeros. Returns the SHA-256 of what was sent when `hashing`.
    /// Blocks: call it from `LibvirtStorage.offload`.
    func upload(_ file: URL, sparse: Bool, hashing: Bool) throws(NimbusError) -> String? {
        let fd = open(file.path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else {
            throw NimbusError(.notFound, "cannot read \(file.path): \(String(cString: strerror(errno)))")
        }
        defer { close(fd) }
        let size = Int64(try LibvirtStorage.fileSize(file))
        guard let stream = libvirt.virStreamNew(pool.connection.pointer, 0) else {
            let error = LibvirtError.last("virStreamNew")
            throw NimbusError(
                .processFailed, "libvirt at \(uri) could not open a stream: \(error.message)", cause: error)
        }
        defer { _ = libvirt.virStreamFree(stream) }
        let flags = sparse ? UInt32(VIR_STORAGE_VOL_UPLOAD_SPARSE_STREAM.rawValue) : 0
        guard libvirt.virStorageVolUpload(pointer, stream, 0, UInt64(size), flags) == 0 else {
            throw failure("uploading \(file.lastPathComponent) into", "virStorageVolUpload", stream)
        }
        var hasher = hashing ? SHA256() : nil
        var buffer = [UInt8](repeating: 0, count: 1 << 20)
        var offset: Int64 = 0
        while offset < size {
            var end = size
            if sparse {
                let data = lseek(fd, off_t(offset), Self.seekData)
                let dataStart = data < 0 ? size : Int64(data)
                if dataStart > offset {
                    guard libvirt.virStreamSendHole(stream, dataStart - offset, 0) == 0 else {
                        throw failure("uploading \(file.lastPathComponent) into", "virStreamSendHole", stream)
                    }
                    offset = dataStart
                    continue
                }
                let hole = lseek(fd, off_t(offset), Self.seekHole)
                end = hole < 0 ? size : min(size, Int64(hole))
            }
            while offset < end {
                let want = Int(min(Int64(buffer.count), end - offset))
                let count = buffer.withUnsafeMutableBytes { pread(fd, $0.baseAddress, want, off_t(offset)) }
                guard count > 0 else {
                    _ = libvirt.virStreamAbort(stream)
                    throw NimbusError(
                        .io, "reading \(file.path) failed at byte \(offset): \(String(cString: strerror(errno)))")
                }
                if hashing { hasher?.update(data: buffer[0..<count]) }
                var sent = 0
                while sent < count {
                    let result = buffer.withUnsafeBytes { bytes in
                        libvirt.virStreamSend(
                            stream, bytes.baseAddress?.advanced(by: sent).assumingMemoryBound(to: CChar.self),
                            count - sent)
                    }
                    guard result > 0 else {
                        throw failure("uploading \(file.lastPathComponent) into", "virStreamSend", stream)
                    }
                    sent += Int(result)
                }
                offset += Int64(count)
            }
        }
        guard libvirt.virStreamFinish(stream) == 0 else {
            throw failure("finishing the upload of \(file.lastPathComponent) into", "virStreamFinish", stream)
        }
        return hasher.map { LibvirtStorage.hex($0.finalize()) }
    }

    /// Reads the first `size` bytes of the volume back through a stream (`virStorageVolDownload`) and
    /// returns their SHA-256. Blocks: call it from `LibvirtStorage.offload`.
    func downloadDigest(size: UInt64) throws(NimbusError) -> String {
        guard let stream = libvirt.virStreamNew(pool.connection.pointer, 0) else {
            let error = LibvirtError.last("virStreamNew")
            throw NimbusError(
                .processFailed, "libvirt at \(uri) could not open a stream: \(error.message)", cause: error)
        }
        defer { _ = libvirt.virStreamFree(stream) }
        guard libvirt.virStorageVolDownload(pointer, stream, 0, size, 0) == 0 else {
            throw failure("reading back", "virStorageVolDownload", stream)
        }
        var hasher = SHA256()
        var buffer = [UInt8](repeating: 0, count: 1 << 20)
        var received: UInt64 = 0
        while true {
            let count = buffer.withUnsafeMutableBytes { bytes in
                libvirt.virStreamRecv(stream, bytes.baseAddress?.assumingMemoryBound(to: CChar.self), bytes.count)
            }
            if count == 0 { break }
            guard count > 0 else { throw failure("reading back", "virStreamRecv", stream) }
            hasher.update(data: buffer[0..<Int(count)])
            received += UInt64(count)
        }
        guard libvirt.virStreamFinish(stream) == 0 else { throw failure("reading back", "virStreamFinish", stream) }
        guard received == size else {
            throw NimbusError(
                .integrity, "volume \(name) in pool \(pool.name) at \(uri) holds \(received) bytes, \(size) were sent")
        }
        return LibvirtStorage.hex(hasher.finalize())
    }
}
