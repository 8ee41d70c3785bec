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
    private func ownedDomain(_ directory: MachineDirectory) throws(NimbusError) -> LibvirtDomain? {
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
        try accelerator(for: choice, connection: nil)
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
                    .invalidState, "machine \(config.name) is already running (libvirt domain \(domainName) on \(uri))")
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
        do {
            placement = try await LibvirtStorage(connection: connection, pool: pool, owner: owner, progress: progress)
                .place(config, in: directory, remote: !local)
        } catch {
            if !definedBefore { try? FileManager.default.removeItem(at: Self.recordFile(directory)) }
            throw error
        }
        let hostFiles =
            local
            ? nil
            : LibvirtRemote.HostFiles(
                nvram: placement.nvram, serialLog: "/var/log/libvirt/qemu/\(domainName)-serial.log",
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
        guard let record = Self.record(directory) else { return MachineStatus(state: .stopped, pid: nil, detail: nil) }
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
    private func running(_ directory: MachineDirectory, _ action: String) throws(NimbusError) -> LibvirtDomain {
        guard let domain = try ownedDomain(directory), domain.isActive else {
            throw NimbusError(.invalidState, "cannot \(action): the machine in \(directory.url.path) is not running")
        }
        return domain
    }

    public func suspend(_ directory: MachineDirectory) async throws(NimbusError) {
        try running(directory, "suspend the machine").call("suspend", "virDomainSuspend") {
            libvirt.virDomainSuspend($0)
        }
    }

    public func resume(_ directory: MachineDirectory) async throws(NimbusError) {
        try running(directory, "resume the machine").call("resume", "virDomainResume") { libvirt.virDomainResume($0) }
    }

    public func reset(_ directory: MachineDirectory) async throws(NimbusError) {
        try running(directory, "reset the machine").call("reset", "virDomainReset") { libvirt.virDomainReset($0, 0) }
    }

    /// The overlay volume in the pool, on this host; snapshots of a stopped machine run qemu-img on it
    /// (libvirt 9.0 refuses internal snapshots of UEFI domains even when shut off).
    public func diskFile(_ directory: MachineDirectory) async throws(NimbusError) -> URL? {
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

    /// What the overlay volume takes in its pool, asked of libvirt, so it is right for a remote host too; 0
    /// before the volume is made, an error once it is gone.
    public func diskAllocation(_ directory: MachineDirectory) async throws(NimbusError) -> UInt64? {
        guard let record = Self.record(directory), let storage = LibvirtStorage.record(directory) else { return nil }
        guard storage.diskCreated else { return 0 }
        guard let volume = try LibvirtStorage.diskVolume(storage, domain: record.domain) else {
            throw NimbusError(.notFound, "the disk volume of domain \(record.domain) is gone from pool \(storage.pool)")
        }
        return try volume.allocation()
    }

    /// Deletes the machine's volumes from its pool (`LibvirtStorage`); base images stay for the next launch.
    public func deleteStorage(_ directory: MachineDirectory) async throws(NimbusError) {
        do {
            try LibvirtStorage.deleteVolumes(of: directory)
        } catch {
            let record = LibvirtStorage.record(directory)
            throw NimbusError(
                error.code,
                "\(error.message); the instance is kept so its volumes (\(record?.volumes.joined(separator: ", ") ?? "none")) can be deleted once \(record?.uri ?? uri) answers: run the command again then (if that host is gone for good, remove \(directory.url.path) by hand)",
                cause: error)
        }
    }

    public func kill(_ directory: MachineDirectory) async throws(NimbusError) {
        guard let domain = try ownedDomain(directory) else { return }
        if domain.isActive {
            try domain.call("destroy", "virDomainDestroy") { libvirt.virDomainDestroy($0) }
        }
    }

    /// Ends the machine if it runs and undefines its domain, with the NVRAM, a managed save image and
    /// snapshot metadata, which would otherwise make libvirt refuse the undefine. A record naming a domain
    /// that is gone or no longer this folder's is dropped without touching anything.
    public func forget(_ directory: MachineDirectory) async throws(NimbusError) {
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
            try domain.call("undefine", "virDomainUndefineFlags") { libvirt.virDomainUndefineFlags($0, UInt32(flags)) }
        }
        try? FileManager.default.removeItem(at: Self.recordFile(directory))
    }

    // MARK: snapshots

    public func saveSnapshot(_ name: String, in directory: MachineDirectory) async throws(NimbusError) {
        let domain = try running(directory, "save snapshot \(name)")
        // libvirt 9.0 refuses internal snapshots of a domain with pflash firmware (its NVRAM is raw; qcow2
        // NVRAM came in 9.2), so say so before it does, with the ways that work.
        if FileManager.default.fileExists(atPath: directory.url.appending(path: LibvirtDomainXML.nvramName).path) {
            throw NimbusError(
                .unsupported,
                "libvirt cannot take a live snapshot of UEFI machine \(domain.name) (its UEFI variables are a raw file): stop the instance and snapshot it while stopped, or use --driver qemu for live snapshots"
            )
        }
        let xml = "<domainsnapshot><name>\(LibvirtDomainXML.escape(name))</name></domainsnapshot>"
        guard let snapshot = libvirt.virDomainSnapshotCreateXML(domain.pointer, xml, 0) else {
            let error = LibvirtError.last("virDomainSnapshotCreateXML")
            throw NimbusError(
                .processFailed, "libvirt could not save snapshot \(name) of domain \(domain.name): \(error.message)",
                cause: error)
        }
        _ = libvirt.virDomainSnapshotFree(snapshot)
    }

    public func loadSnapshot(_ name: String, in directory: MachineDirectory) async throws(NimbusError) {
        let domain = try running(directory, "load snapshot \(name)")
        let snapshot = try Self.snapshot(name, of: domain)
        defer { _ = libvirt.virDomainSnapshotFree(snapshot) }
        try domain.call("revert to snapshot \(name) of", "virDomainRevertToSnapshot") { _ in
            libvirt.virDomainRevertToSnapshot(snapshot, 0)
        }
    }

    public func deleteSnapshot(_ name: String, in directory: MachineDirectory) async throws(NimbusError) {
        let domain = try running(directory, "delete snapshot \(name)")
        let snapshot = try Self.snapshot(name, of: domain)
        defer { _ = libvirt.virDomainSnapshotFree(snapshot) }
        try domain.call("delete snapshot \(name) of", "virDomainSnapshotDelete") { _ in
            libvirt.virDomainSnapshotDelete(snapshot, 0)
        }
    }

    private static func snapshot(_ name: String, of domain: LibvirtDomain) throws(NimbusError) -> virDomainSnapshotPtr {
        guard let snapshot = libvirt.virDomainSnapshotLookupByName(domain.pointer, name, 0) else {
            let error = LibvirtError.last("virDomainSnapshotLookupByName")
            throw NimbusError(
                .notFound, "domain \(domain.name) has no snapshot \(name): \(error.message)", cause: error)
        }
        return snapshot
    }

    // MARK: stop

    /// How often the stop ladder looks at the domain's state.
    static let pollInterval: Duration = .milliseconds(250)
    /// How long the graceful destroy (SIGTERM) may take before the forced one.
    static let rungTimeout: Duration = .seconds(10)

    /// The QEMU driver's ladder, through libvirt: the ACPI power button (`virDomainShutdownFlags` with
    /// ACPI_POWER_BTN) and a wait up to `timeout`, then `virDomainDestroyFlags(GRACEFUL)` (SIGTERM), then
    /// `virDomainDestroy` (SIGKILL).
    public func stop(
        _ directory: MachineDirectory, timeout: Duration = .seconds(60), progress: (@Sendable (String) -> Void)? = nil
    ) async throws(NimbusError) -> StopOutcome {
        var steps: [String] = []
        func log(_ step: String) {
            steps.append(step)
            progress?(step)
        }
        guard let domain = try ownedDomain(directory), domain.isActive else {
            return StopOutcome(endedBy: .alreadyStopped, shutdownReason: nil, steps: ["not running"])
        }
        var endedBy: StopOutcome.Rung?
        var reason: String?
        if libvirt.virDomainShutdownFlags(domain.pointer, UInt32(VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN.rawValue)) == 0 {
            log(
                "pressed the ACPI power button (virDomainShutdown); waiting up to \(timeout) for the guest to shut down"
            )
            if await Self.waitUntilGone(domain, timeout: timeout) {
                log("the guest shut down")
                endedBy = .guestShutdown
                reason = "guest-shutdown"
            } else {
                log("no shutdown within \(timeout)")
            }
        } else {
            log(
                "the power button failed (\(LibvirtError.last("virDomainShutdownFlags").message)); destroying the domain"
            )
        }
        if endedBy == nil, domain.isActive {
            log("destroying domain \(domain.name) gracefully (SIGTERM to QEMU)")
            if libvirt.virDomainDestroyFlags(domain.pointer, UInt32(VIR_DOMAIN_DESTROY_GRACEFUL.rawValue)) == 0,
                await Self.waitUntilGone(domain, timeout: Self.rungTimeout)
            {
                endedBy = .terminate
                reason = "host-signal"
            } else {
                libvirt.virResetLastError()
            }
        }
        if endedBy == nil, domain.isActive {
            log("destroying domain \(domain.name) (SIGKILL to QEMU)")
            try domain.call("destroy", "virDomainDestroy") { libvirt.virDomainDestroy($0) }
            endedBy = .kill
            reason = "host-signal"
        }
        SerialLog.trim(directory.serialLog, limit: MachineConfig.Console().logLimit)
        return StopOutcome(endedBy: endedBy ?? .guestShutdown, shutdownReason: reason, steps: steps)
    }

    /// Waits until the domain no longer runs (it is then shut off, still defined).
    private static func waitUntilGone(_ domain: LibvirtDomain, timeout: Duration) async -> Bool {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            if !domain.isActive { return true }
            try? await Task.sleep(for: pollInterval)
        }
        return !domain.isActive
    }
}

// MARK: - Finding Nimbus's domains

/// A domain with Nimbus's metadata, found on a daemon.
public struct LibvirtDomainSummary: Sendable, Hashable {
    /// The daemon's URI.
    public var uri: String
    /// The domain's name (`nimbus-NAME`).
    public var domain: String
    /// What its metadata element records.
    public var metadata: LibvirtDomainXML.Metadata
    /// Whether it runs.
    public var state: MachineStatus.State
    /// Files of its definition (disks, seed, NVRAM) that do not exist, on a local daemon; empty remotely,
    /// where they are not this host's to check.
    public var missingFiles: [String]
}

extension LibvirtDriver {
    /// What `domain(forInstance:)` found under an instance's domain name.
    public enum Lookup: Sendable, Hashable {
        /// No domain of that name.
        case none
        /// A domain of that name without Nimbus's metadata: never touched.
        case foreign(domain: String)
        /// Nimbus's domain.
        case nimbus(LibvirtDomainSummary)
    }

    /// Every domain on the daemon at `uri` that carries Nimbus's metadata; domains without it are skipped.
    public static func nimbusDomains(uri: String) throws(NimbusError) -> [LibvirtDomainSummary] {
        let connection = try LibvirtConnection(uri: uri)
        return try connection.allDomains().compactMap { summary($0, uri: uri) }
    }

    /// The domain an instance named `instance` would have on the daemon at `uri`.
    public static func domain(forInstance instance: String, uri: String) throws(NimbusError) -> Lookup {
        let connection = try LibvirtConnection(uri: uri)
        let name = LibvirtDomainXML.domainName(for: instance)
        guard let domain = try connection.domain(named: name) else { return .none }
        guard let summary = summary(domain, uri: uri) else { return .foreign(domain: name) }
        return .nimbus(summary)
    }

    static func summary(_ domain: LibvirtDomain, uri: String) -> LibvirtDomainSummary? {
        guard let metadata = domain.metadata else { return nil }
        let state = (try? domain.state()).map { machineState($0.state).0 } ?? .unresponsive
        var missing: [String] = []
        if isLocal(uri), let xml = domain.xml(inactive: true) {
            missing = files(in: xml).filter { !FileManager.default.fileExists(atPath: $0) }
        }
        return LibvirtDomainSummary(
            uri: uri, domain: domain.name, metadata: metadata, state: state, missingFiles: missing)
    }

    /// The files a domain definition names: disk sources and the NVRAM.
    static func files(in xml: String) -> [String] {
        let pattern = #"<source file=["']([^"']+)["']|<nvram[^>]*>([^<]+)</nvram>"#
        guard let expression = try? NSRegularExpression(pattern: pattern) else { return [] }
        return expression.matches(in: xml, range: NSRange(xml.startIndex..., in: xml)).compactMap { match in
            let range = Range(match.range(at: 1), in: xml) ?? Range(match.range(at: 2), in: xml)
            return range.map { LibvirtDomainXML.unescape(String(xml[$0])) }
        }
    }

    /// Replaces the owner's annotations in the metadata of the machine's domain, in its persistent
    /// definition and, while it runs, in the live one (what `start` wrote is from before the start).
    public func annotate(_ directory: MachineDirectory, _ annotations: [String: String]) throws(NimbusError) {
        guard let domain = try ownedDomain(directory), var metadata = domain.metadata else { return }
        metadata.annotations = annotations.merging(Self.storageAnnotation(directory)) { $1 }
        var flags = VIR_DOMAIN_AFFECT_CONFIG.rawValue
        if domain.isActive { flags |= VIR_DOMAIN_AFFECT_LIVE.rawValue }
        try domain.call("update the metadata of", "virDomainSetMetadata") {
            libvirt.virDomainSetMetadata(
                $0, Int32(VIR_DOMAIN_METADATA_ELEMENT.rawValue), metadata.element(prefix: nil), "nimbus",
                LibvirtDomainXML.metadataNamespace, flags)
        }
    }

    /// Makes `directory` the folder of a Nimbus domain found on a daemon (`nimbus recover`, which builds
    /// the folder elsewhere and renames it to the one the metadata names): it records the daemon and the
    /// domain, so the driver finds the machine again.
    public static func adopt(_ machine: DefinedMachine, in directory: MachineDirectory) throws(NimbusError) {
        try writeRecord(Record(uri: machine.place, domain: machine.definitionName), in: directory)
        // Which pool volumes are the machine's: without it, its next start would make a new, empty overlay.
        if let storage = machine.annotations[storageAnnotationKey] {
            do {
                try AtomicFile.write(Data(storage.utf8), to: LibvirtStorage.recordFile(directory), permissions: 0o600)
            } catch {
                throw NimbusError(.io, "could not write \(LibvirtStorage.recordFile(directory).path)", cause: error)
            }
        }
    }

    /// The annotation that keeps the machine's storage record (`LibvirtStorage.Record`) in its domain.
    static let storageAnnotationKey = "libvirtStorage"

    /// The machine's storage record as an annotation, so a domain whose folder was lost still names its
    /// volumes; empty when the machine has none.
    static func storageAnnotation(_ directory: MachineDirectory) -> [String: String] {
        guard let data = try? Data(contentsOf: LibvirtStorage.recordFile(directory)) else { return [:] }
        return [storageAnnotationKey: String(decoding: data, as: UTF8.self)]
    }

    /// The host a URI names, as `nimbus list` shows it: `local` for this host's daemons.
    public static func hostLabel(_ uri: String) -> String {
        let host = URLComponents(string: uri)?.host ?? ""
        return host.isEmpty ? "local" : host
    }
}

// MARK: - Serial console

/// The machine's serial console as a libvirt stream (`virDomainOpenConsole`): what `virsh console` uses,
/// and it works the same on remote daemons, where there is no local pty to open.
///
/// `@unchecked Sendable`: one thread receives while another sends, which libvirt's blocking streams allow
/// (its RPC client passes the connection between waiting threads); `finished` is guarded by a lock.
public final class LibvirtConsole: MachineConsole, @unchecked Sendable {
    private let stream: virStreamPtr
    private let domain: LibvirtDomain
    private let lock = NSLock()
    private var finished = false

    init(stream: virStreamPtr, domain: LibvirtDomain) {
        self.stream = stream
        self.domain = domain
    }

    deinit {
        close()
        _ = libvirt.virStreamFree(stream)
    }

    /// Sends `bytes` to the guest's serial port; false once the stream has ended.
    public func send(_ bytes: UnsafeRawBufferPointer) -> Bool {
        var offset = 0
        while offset < bytes.count {
            guard let base = bytes.baseAddress else { return true }
            let sent = libvirt.virStreamSend(
                stream, base.advanced(by: offset).assumingMemoryBound(to: CChar.self), bytes.count - offset)
            guard sent > 0 else {
                libvirt.virResetLastError()
                return false
            }
            offset += Int(sent)
        }
        return true
    }

    /// Waits for what the guest prints; 0 at the end of the stream (the machine stopped, or `close`).
    public func receive(_ buffer: UnsafeMutableRawBufferPointer) -> Int {
        guard let base = buffer.baseAddress else { return 0 }
        let count = libvirt.virStreamRecv(stream, base.assumingMemoryBound(to: CChar.self), buffer.count)
        if count < 0 { libvirt.virResetLastError() }
        return max(0, Int(count))
    }

    /// Ends the stream, which wakes a thread waiting in `receive`.
    public func close() {
        lock.lock()
        defer { lock.unlock() }
        guard !finished else { return }
        finished = true
        if libvirt.virStreamAbort(stream) < 0 { libvirt.virResetLastError() }
    }
}

extension LibvirtDriver {
    /// Opens the serial console of the running machine in `directory`. `force` takes it over from another
    /// client (a `virsh console` left open), as libvirt allows one console client at a time.
    public func openConsole(_ directory: MachineDirectory, force: Bool) throws(NimbusError) -> LibvirtConsole {
        guard let record = Self.record(directory) else {
            throw NimbusError(.invalidState, "the machine in \(directory.url.path) has never run through libvirt")
        }
        let connection = try LibvirtConnection(uri: record.uri)
        guard let domain = try connection.domain(named: record.domain), domain.isActive else {
            throw NimbusError(
                .invalidState, "cannot open the console: the machine in \(directory.url.path) is not running")
        }
        try Self.checkOwnership(domain, directory: directory, uri: record.uri)
        guard let stream = libvirt.virStreamNew(connection.pointer, 0) else {
            let error = LibvirtError.last("virStreamNew")
            throw NimbusError(.processFailed, "libvirt could not open a stream: \(error.message)", cause: error)
        }
        let flags = force ? UInt32(VIR_DOMAIN_CONSOLE_FORCE.rawValue) : 0
        guard libvirt.virDomainOpenConsole(domain.pointer, nil, stream, flags) == 0 else {
            let error = LibvirtError.last("virDomainOpenConsole")
            _ = libvirt.virStreamFree(stream)
            throw NimbusError(
                .processFailed,
                "libvirt could not open the console of domain \(domain.name): \(error.message); `virsh -c \(record.uri) console \(domain.name)` is the same console",
                cause: error)
        }
        return LibvirtConsole(stream: stream, domain: domain)
    }
}
