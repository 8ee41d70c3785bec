import CLibvirt
import Foundation
import NimbusCore
import NimbusMachines

/// Runs machines through libvirt's C API: the same `MachineConfig`, rendered as domain XML
/// (`LibvirtDomainXML`), on a local or remote libvirt daemon.
///
/// Domains are persistent: `start` defines the domain from the current `MachineConfig`
/// (`virDomainDefineXML`, keeping the UUID of an earlier definition) and starts it (`virDomainCreate`); a
/// stopped machine, however it stopped (power-off inside the guest, the stop ladder, a crash), is a
/// shut-off defined domain until `forget` undefines it with its NVRAM, snapshot metadata and managed save.
/// The domain's metadata element carries the owner's annotations, so a lost folder can be rebuilt from
/// it. The folder records which daemon and domain a machine runs on (`libvirt.json`), so any `nimbus`
/// process finds it again.
///
/// Nimbus never touches a domain without its metadata element naming this machine's folder.
public struct LibvirtDriver: Hypervisor {
    public let name = "libvirt"
    /// The daemon new machines start on; a started machine keeps the URI its folder records.
    public var uri: String
    /// Where the accelerator facts are cached (NimbusPaths.hostFacts); nil probes every time.
    public var hostFactsCache: URL?
    /// The storage pool the machine's disks live in (`LibvirtStorage`).
    public var pool: String = LibvirtStorage.defaultPool
    /// Hears what takes time (creating the pool, uploading a base image).
    public var progress: @Sendable (String) -> Void = { _ in }

    /// The URI used when none is given: the host's system daemon, the only one that can run KVM guests
    /// for every user in the libvirt group.
    public static let defaultURI = "qemu:///system"

    public init(uri: String = LibvirtDriver.defaultURI, hostFactsCache: URL?) {
        self.uri = uri
        self.hostFactsCache = hostFactsCache
    }

    /// Opens and closes a connection to `uri`: the daemon answers, or an error says how to fix it.
    public func checkConnection() throws(NimbusError) {
        _ = try LibvirtConnection(uri: uri)
    }

    /// What the machine folder records about its domain.
    struct Record: Codable, Sendable, Hashable {
        var uri: String
        var domain: String
    }

    static func recordFile(_ directory: MachineDirectory) -> URL { directory.url.appending(path: "libvirt.json") }

    static func record(_ directory: MachineDirectory) -> Record? {
        guard let data = try? Data(contentsOf: recordFile(directory)) else { return nil }
        return try? JSONDecoder().decode(Record.self, from: data)
    }

    /// Whether `uri` names a daemon on this host (no host part), where files are shared with it.
    static func isLocal(_ uri: String) -> Bool {
        (URLComponents(string: uri)?.host ?? "").isEmpty
    }

    /// The domain of the machine in `directory`, checked to be Nimbus's and this folder's; nil when the
    /// machine does not run (or never started through libvirt).
    func ownedDomain(_ directory: MachineDirectory) throws(NimbusError) -> LibvirtDomain? {
        guard let record = Self.record(directory) else { return nil }
        let connection = try LibvirtConnection(uri: record.uri)
        guard let domain = try connection.domain(named: record.domain) else { return nil }
        try Self.checkOwnership(domain, directory: directory, uri: record.uri)
        return domain
    }

    /// Throws unless `domain` carries Nimbus's metadata for `directory`.
    static func checkOwnership(_ domain: LibvirtDomain, directory: MachineDirectory, uri: String) throws(NimbusError) {
        guard let metadata = domain.metadata else {
            throw NimbusError(
                .alreadyExists,
                "libvirt domain \(domain.name) on \(uri) was not created by Nimbus, which never touches it: rename or remove that domain, or give the instance another name"
            )
        }
        guard metadata.folder == directory.url.path else {
            throw NimbusError(
                .alreadyExists,
                "libvirt domain \(domain.name) on \(uri) belongs to the Nimbus instance in \(metadata.folder) (host \(metadata.origin)), not to \(directory.url.path): give this instance another name"
            )
        }
    }

    // MARK: start

    public func accelerator(for choice: AcceleratorChoice) async throws(NimbusError) -> AcceleratorDecision {
        return try await LibvirtExecutor.run(uri) { () throws(NimbusError) -> AcceleratorDecision in
            try accelerator(for: choice, connection: nil)
        }
    }

    /// The accelerator on the daemon's host: this host's probe for a local daemon, the daemon's capabilities
    /// for a remote one (over `connection`, or a new one).
    private func accelerator(for choice: AcceleratorChoice, connection: LibvirtConnection?) throws(NimbusError)
        -> AcceleratorDecision
    {
        if Self.isLocal(uri) { return try AcceleratorProbe.resolve(choice, cache: hostFactsCache) }
        if let connection { return try LibvirtRemote.accelerator(choice, connection: connection) }
        return try LibvirtRemote.accelerator(choice, connection: LibvirtConnection(uri: uri))
    }

    public func start(_ config: MachineConfig, in directory: MachineDirectory) async throws(NimbusError)
        -> RunningMachine
    {
        return try await LibvirtExecutor.run(uri) { () throws(NimbusError) -> RunningMachine in
            try config.validate()
            let local = Self.isLocal(uri)
            if !local { try LibvirtRemote.check(config, uri: uri) }
            let connection = try LibvirtConnection(uri: uri)
            let decision = try accelerator(for: config.accelerator, connection: connection)
            let domainName = LibvirtDomainXML.domainName(for: config.name)
            // A shut-off definition of this machine is defined again from the current config: the SSH port, the
            // seed's URL and the user's changes (cpus, memory in instance.yaml) may differ from the last start,
            // and the config, not libvirt's copy, is what Nimbus keeps. Its UUID is kept, so it stays one domain.
            var uuid: String?
            if let existing = try connection.domain(named: domainName) {
                try Self.checkOwnership(existing, directory: directory, uri: uri)
                if existing.isActive {
                    throw NimbusError(
                        .invalidState,
                        "machine \(config.name) is already running (libvirt domain \(domainName) on \(uri))")
                }
                uuid = existing.uuid
            }
            let definedBefore = uuid != nil
            do {
                try FileManager.default.createDirectory(at: directory.url, withIntermediateDirectories: true)
            } catch {
                throw NimbusError(.io, "could not create \(directory.url.path)", cause: error)
            }
            if case .uefi(_, let template) = config.firmware, !FileManager.default.fileExists(atPath: template) {
                throw NimbusError(
                    .unsupported,
                    "the UEFI variable store template \(template) does not exist: install OVMF (`apt-get install ovmf`) or use --firmware bios"
                )
            }
            SerialLog.rotate(directory, limit: config.console.logLimit)
            // virtlogd (root) appends to the log in place, but a file it creates is root's alone (0600), which
            // a user's nimbus could not read: made here first, it stays the user's.
            if local { _ = FileManager.default.createFile(atPath: directory.serialLog.path, contents: nil) }
            try Self.writeRecord(Record(uri: uri, domain: domainName), in: directory)

            // The system daemon runs QEMU as libvirt-qemu by default; locally, run it as the calling user.
            let owner: LibvirtDomainXML.Owner? = local && uri.hasSuffix("/system") ? .current : nil
            let placement: LibvirtStorage.Placement
            do throws(NimbusError) {
                placement = try await LibvirtStorage(
                    connection: connection, pool: pool, owner: owner, progress: progress
                )
                .place(config, in: directory, remote: !local)
            } catch {
                if !definedBefore { try? FileManager.default.removeItem(at: Self.recordFile(directory)) }
                throw error
            }
            let hostFiles =
                local
                ? nil
                : LibvirtRemote.HostFiles(
                    nvram: placement.nvram, serialLog: LibvirtRemote.serialLogPath(domain: domainName),
                    forwardAddress: "0.0.0.0")
            let fixedPort = config.network.sshHostPort
            let forwardSSH = config.network.mode == .user && config.network.forwardSSH
            var attempt = 0
            while true {
                attempt += 1
                var sshHostPort: UInt16?
                if forwardSSH {
                    if let fixedPort, local || attempt == 1 {
                        sshHostPort = fixedPort
                    } else {
                        sshHostPort = local ? try Loopback.requireFreePort() : LibvirtRemote.randomPort()
                    }
                }
                var placed = placement.config
                placed.annotations.merge(Self.storageAnnotation(directory)) { $1 }
                let xml = try LibvirtDomainXML.render(
                    placed, in: directory, accelerator: decision.accelerator, sshHostPort: sshHostPort,
                    owner: owner, hostFiles: hostFiles, uuid: uuid)
                guard
                    let pointer = libvirt.virDomainDefineXMLFlags(
                        connection.pointer, xml, UInt32(VIR_DOMAIN_DEFINE_VALIDATE.rawValue))
                else {
                    let error = LibvirtError.last("virDomainDefineXML")
                    if !definedBefore { try? FileManager.default.removeItem(at: Self.recordFile(directory)) }
                    throw NimbusError(
                        .processFailed, "libvirt at \(uri) could not define machine \(config.name): \(error.message)",
                        cause: error)
                }
                let domain = LibvirtDomain(pointer, connection: connection, name: domainName)
                uuid = uuid ?? domain.uuid
                if libvirt.virDomainCreate(domain.pointer) == 0 {
                    let pid = local ? Self.qemuPID(domainName, uri: uri) : 0
                    return RunningMachine(
                        pid: pid, accelerator: decision, sshHostPort: sshHostPort, qmpSocket: directory.qmpSocket,
                        vncSocket: config.vnc ? directory.vncSocket : nil,
                        commandLine: ["virDomainCreate", uri, domain.name],
                        sshHost: LibvirtRemote.host(of: uri) ?? "127.0.0.1")
                }
                let error = LibvirtError.last("virDomainCreate")
                // A free port found by binding port 0 can be taken again before QEMU binds it, and a remote port is
                // a guess; retry with another.
                if error.message.contains("Could not set up host forwarding rule"), fixedPort == nil || !local,
                    attempt < (local ? 3 : 8)
                {
                    continue
                }
                // A machine that never ran leaves no definition behind; an earlier one stays, as it was usable.
                if !definedBefore {
                    _ = libvirt.virDomainUndefineFlags(domain.pointer, UInt32(VIR_DOMAIN_UNDEFINE_KEEP_NVRAM.rawValue))
                    libvirt.virResetLastError()
                    try? FileManager.default.removeItem(at: Self.recordFile(directory))
                }
                throw NimbusError(
                    .processFailed, "libvirt at \(uri) could not start machine \(config.name): \(error.message)",
                    cause: error)
            }
        }
    }

    static func writeRecord(_ record: Record, in directory: MachineDirectory) throws(NimbusError) {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        do {
            try AtomicFile.write(try encoder.encode(record), to: recordFile(directory), permissions: 0o600)
        } catch {
            throw NimbusError(.io, "could not write \(recordFile(directory).path)", cause: error)
        }
    }

    /// QEMU's pid, from the pidfile the local daemon keeps; 0 when it cannot be read (remote, session).
    static func qemuPID(_ domain: String, uri: String) -> Int32 {
        let file = uri.hasSuffix("/system") ? "/run/libvirt/qemu/\(domain).pid" : ""
        guard !file.isEmpty, let text = try? String(contentsOfFile: file, encoding: .utf8) else { return 0 }
        return Int32(text.trimmingCharacters(in: .whitespacesAndNewlines)) ?? 0
    }

    // MARK: status and control

    public func status(of directory: MachineDirectory) async -> MachineStatus {
        return await LibvirtExecutor.answer(uri) { () -> MachineStatus in
            guard let record = Self.record(directory) else {
                return MachineStatus(state: .stopped, pid: nil, detail: nil)
            }
            do throws(NimbusError) {
                guard let domain = try ownedDomain(directory) else {
                    return MachineStatus(state: .stopped, pid: nil, detail: nil)
                }
                let (state, _) = try domain.state()
                let (machineState, detail) = Self.machineState(state)
                let pid = machineState == .stopped ? nil : Self.qemuPID(record.domain, uri: record.uri)
                return MachineStatus(state: machineState, pid: pid, detail: detail)
            } catch {
                return MachineStatus(state: .unresponsive, pid: nil, detail: error.message)
            }
        }
    }

    /// A libvirt state as a machine state, with libvirt's word for it.
    static func machineState(_ state: virDomainState) -> (MachineStatus.State, String) {
        switch state {
        case VIR_DOMAIN_RUNNING, VIR_DOMAIN_BLOCKED: (.running, "running")
        case VIR_DOMAIN_PAUSED: (.paused, "paused")
        case VIR_DOMAIN_PMSUSPENDED: (.paused, "pmsuspended")
        case VIR_DOMAIN_CRASHED: (.crashed, "crashed")
        case VIR_DOMAIN_SHUTOFF: (.stopped, "shutoff")
        default: (.transitioning, "shutdown")
        }
    }

    /// The running domain of the machine in `directory`, or an error saying it does not run.
    func running(_ directory: MachineDirectory, _ action: String) throws(NimbusError) -> LibvirtDomain {
        guard let domain = try ownedDomain(directory), domain.isActive else {
            throw NimbusError(.invalidState, "cannot \(action): the machine in \(directory.url.path) is not running")
        }
        return domain
    }

    public func suspend(_ directory: MachineDirectory) async throws(NimbusError) {
        try await LibvirtExecutor.run(uri) { () throws(NimbusError) in
            try running(directory, "suspend the machine").call("suspend", "virDomainSuspend") {
                libvirt.virDomainSuspend($0)
            }
        }
    }

    public func resume(_ directory: MachineDirectory) async throws(NimbusError) {
        try await LibvirtExecutor.run(uri) { () throws(NimbusError) in
            try running(directory, "resume the machine").call("resume", "virDomainResume") {
                libvirt.virDomainResume($0)
            }
        }
    }

    public func reset(_ directory: MachineDirectory) async throws(NimbusError) {
        try await LibvirtExecutor.run(uri) { () throws(NimbusError) in
            try running(directory, "reset the machine").call("reset", "virDomainReset") {
                libvirt.virDomainReset($0, 0)
            }
        }
    }

    /// The overlay volume in the pool, on this host; snapshots of a stopped machine run qemu-img on it
    /// (libvirt 9.0 refuses internal snapshots of UEFI domains even when shut off).
    public func diskFile(_ directory: MachineDirectory) async throws(NimbusError) -> URL? {
        return try await LibvirtExecutor.run(uri) { () throws(NimbusError) -> URL? in
            guard let record = Self.record(directory), let storage = LibvirtStorage.record(directory),
                let path = try LibvirtStorage.diskVolume(storage, domain: record.domain)?.path()
            else { return nil }
            guard Self.isLocal(record.uri) else {
                throw NimbusError(
                    .unsupported,
                    "the disk of this machine is in a pool on \(record.uri), which qemu-img cannot reach from here, and libvirt 9.0 takes no snapshots of UEFI domains: snapshot it on that host (`qemu-img snapshot -c NAME \(path)` while it is stopped)"
                )
            }
            return URL(fileURLWithPath: path)
        }
    }

    /// What the overlay volume takes in its pool, asked of libvirt, so it is right for a remote host too; 0
    /// before the volume is made, an error once it is gone.
    public func diskAllocation(_ directory: MachineDirectory) async throws(NimbusError) -> UInt64? {
        return try await LibvirtExecutor.run(uri) { () throws(NimbusError) -> UInt64? in
            guard let record = Self.record(directory), let storage = LibvirtStorage.record(directory) else {
                return nil
            }
            guard storage.created(storage.rootKey) else { return 0 }
            guard let volume = try LibvirtStorage.diskVolume(storage, domain: record.domain) else {
                throw NimbusError(
                    .notFound, "the disk volume of domain \(record.domain) is gone from pool \(storage.pool)")
            }
            return try volume.allocation()
        }
    }

    /// Deletes the overlays of roots given up (`LibvirtStorage.deleteRootDisks`).
    public func deleteMainDisks(_ directory: MachineDirectory, keeping keys: Set<String?>) async throws(NimbusError) {
        try await LibvirtExecutor.run(uri) { () throws(NimbusError) in
            guard let record = Self.record(directory) else { return }
            try LibvirtStorage.deleteRootDisks(of: directory, domain: record.domain, keeping: keys)
        }
    }

    /// Makes the empty qcow2 data volume `name` of `bytes` in this driver's pool (made when missing).
    public func createDataVolume(_ name: String, size bytes: UInt64) async throws(NimbusError) {
        try await LibvirtExecutor.run(uri) { () throws(NimbusError) in
            let local = Self.isLocal(uri)
            let owner: LibvirtDomainXML.Owner? = local && uri.hasSuffix("/system") ? .current : nil
            let storage = LibvirtStorage(connection: try LibvirtConnection(uri: uri), pool: pool, owner: owner) { _ in }
            _ = try storage.ensurePool().createVolume(name, size: bytes, format: .qcow2, mode: 0o600, owner: owner)
        }
    }

    /// Grows data volume `name` in this driver's pool; false when the pool has no such volume.
    public func resizeDataVolume(_ name: String, to bytes: UInt64) async throws(NimbusError) -> Bool {
        try await LibvirtExecutor.run(uri) { () throws(NimbusError) -> Bool in
            let storage = LibvirtStorage(connection: try LibvirtConnection(uri: uri), pool: pool, owner: nil) { _ in }
            guard let volume = try storage.existingPool()?.volume(named: name) else { return false }
            try volume.resize(to: bytes)
            return true
        }
    }

    /// Deletes data volume `name` from this driver's pool, when it is there.
    public func deleteDataVolume(_ name: String) async throws(NimbusError) {
        try await LibvirtExecutor.run(uri) { () throws(NimbusError) in
            let storage = LibvirtStorage(connection: try LibvirtConnection(uri: uri), pool: pool, owner: nil) { _ in }
            let found = try storage.existingPool()
            found?.refresh()
            try found?.volume(named: name)?.delete()
        }
    }

    /// Deletes the machine's volumes from its pool (`LibvirtStorage`); base images stay for the next launch.
    public func deleteStorage(_ directory: MachineDirectory) async throws(NimbusError) {
        try await LibvirtExecutor.run(uri) { () throws(NimbusError) in
            do throws(NimbusError) {
                try LibvirtStorage.deleteVolumes(of: directory)
            } catch {
                let record = LibvirtStorage.record(directory)
                throw NimbusError(
                    error.code,
                    "\(error.message); the instance is kept so its volumes (\(record?.volumes.joined(separator: ", ") ?? "none")) can be deleted once \(record?.uri ?? uri) answers: run the command again then (if that host is gone for good, remove \(directory.url.path) by hand)",
                    cause: error)
            }
        }
    }

    public func kill(_ directory: MachineDirectory) async throws(NimbusError) {
        try await LibvirtExecutor.run(uri) { () throws(NimbusError) in
            guard let domain = try ownedDomain(directory) else { return }
            if domain.isActive {
                try domain.call("destroy", "virDomainDestroy") { libvirt.virDomainDestroy($0) }
            }
        }
    }

    /// Ends the machine if it runs and undefines its domain, with the NVRAM, a managed save image and
    /// snapshot metadata, which would otherwise make libvirt refuse the undefine. A record naming a domain
    /// that is gone or no longer this folder's is dropped without touching anything.
    public func forget(_ directory: MachineDirectory) async throws(NimbusError) {
        try await LibvirtExecutor.run(uri) { () throws(NimbusError) in
            guard let record = Self.record(directory) else { return }
            let connection = try LibvirtConnection(uri: record.uri)
            if let domain = try connection.domain(named: record.domain),
                domain.metadata?.folder == directory.url.path
            {
                if domain.isActive {
                    try domain.call("destroy", "virDomainDestroy") { libvirt.virDomainDestroy($0) }
                }
                let flags =
                    VIR_DOMAIN_UNDEFINE_NVRAM.rawValue | VIR_DOMAIN_UNDEFINE_MANAGED_SAVE.rawValue
                    | VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA.rawValue
                try domain.call("undefine", "virDomainUndefineFlags") {
                    libvirt.virDomainUndefineFlags($0, UInt32(flags))
                }
            }
            try? FileManager.default.removeItem(at: Self.recordFile(directory))
        }
    }

}
