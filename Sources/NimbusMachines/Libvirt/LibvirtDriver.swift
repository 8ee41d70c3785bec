import CLibvirt
import Foundation
import NimbusCore

/// Runs machines through libvirt's C API: the same `MachineConfig`, rendered as domain XML
/// (`LibvirtDomainXML`), on a local or remote libvirt daemon.
///
/// Domains are transient (`virDomainCreateXML`): the domain exists exactly while the machine runs, and
/// libvirt removes it itself when the guest powers off, crashes or is destroyed. The machine's lasting
/// state (disks, UEFI variables, serial log) lives in its folder like the QEMU driver's, so a stopped
/// instance never leaves a defined domain behind, whichever way it stopped. The folder records which
/// daemon and domain a machine runs on (`libvirt.json`), so any `nimbus` process finds it again.
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

    public func start(_ config: MachineConfig, in directory: MachineDirectory) async throws(NimbusError)
        -> RunningMachine
    {
        try config.validate()
        let local = Self.isLocal(uri)
        if !local { try LibvirtRemote.check(config, uri: uri) }
        let connection = try LibvirtConnection(uri: uri)
        let decision =
            local
            ? try AcceleratorProbe.resolve(config.accelerator, cache: hostFactsCache)
            : try LibvirtRemote.accelerator(config.accelerator, connection: connection)
        let domainName = LibvirtDomainXML.domainName(for: config.name)
        if let existing = try connection.domain(named: domainName) {
            try Self.checkOwnership(existing, directory: directory, uri: uri)
            if existing.isActive {
                throw NimbusError(
                    .invalidState, "machine \(config.name) is already running (libvirt domain \(domainName) on \(uri))")
            }
            // A shut-off definition of this very machine (left by hand or by an older Nimbus): replace it.
            _ = libvirt.virDomainUndefineFlags(existing.pointer, UInt32(VIR_DOMAIN_UNDEFINE_KEEP_NVRAM.rawValue))
            libvirt.virResetLastError()
        }
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
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        do {
            try AtomicFile.write(
                try encoder.encode(Record(uri: uri, domain: domainName)), to: Self.recordFile(directory),
                permissions: 0o600)
        } catch {
            throw NimbusError(.io, "could not write \(Self.recordFile(directory).path)", cause: error)
        }

        // The system daemon runs QEMU as libvirt-qemu by default; locally, run it as the calling user.
        let owner: LibvirtDomainXML.Owner? = local && uri.hasSuffix("/system") ? .current : nil
        let placement: LibvirtStorage.Placement
        do {
            placement = try await LibvirtStorage(connection: connection, pool: pool, owner: owner, progress: progress)
                .place(config, in: directory, remote: !local)
        } catch {
            try? FileManager.default.removeItem(at: Self.recordFile(directory))
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
                    sshHostPort = local ? try QEMUDriver.freeLoopbackPort() : LibvirtRemote.randomPort()
                }
            }
            let xml = try LibvirtDomainXML.render(
                placement.config, in: directory, accelerator: decision.accelerator, sshHostPort: sshHostPort,
                owner: owner, hostFiles: hostFiles)
            if let domainPointer = libvirt.virDomainCreateXML(
                connection.pointer, xml, UInt32(VIR_DOMAIN_START_VALIDATE.rawValue))
            {
                let domain = LibvirtDomain(domainPointer, connection: connection, name: domainName)
                let pid = local ? Self.qemuPID(domainName, uri: uri) : 0
                return RunningMachine(
                    pid: pid, accelerator: decision, sshHostPort: sshHostPort, qmpSocket: directory.qmpSocket,
                    vncSocket: config.vnc ? directory.vncSocket : nil,
                    commandLine: ["virDomainCreateXML", uri, domain.name],
                    sshHost: LibvirtRemote.host(of: uri) ?? "127.0.0.1")
            }
            let error = LibvirtError.last("virDomainCreateXML")
            // A free port found by binding port 0 can be taken again before QEMU binds it, and a remote port is
            // a guess; retry with another.
            if error.message.contains("Could not set up host forwarding rule"), fixedPort == nil || !local,
                attempt < (local ? 3 : 8)
            {
                continue
            }
            try? FileManager.default.removeItem(at: Self.recordFile(directory))
            throw NimbusError(
                .processFailed, "libvirt at \(uri) could not start machine \(config.name): \(error.message)",
                cause: error)
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
            let pid = Self.qemuPID(record.domain, uri: record.uri)
            switch state {
            case VIR_DOMAIN_RUNNING, VIR_DOMAIN_BLOCKED:
                return MachineStatus(state: .running, pid: pid, detail: "running")
            case VIR_DOMAIN_PAUSED: return MachineStatus(state: .paused, pid: pid, detail: "paused")
            case VIR_DOMAIN_PMSUSPENDED: return MachineStatus(state: .paused, pid: pid, detail: "pmsuspended")
            case VIR_DOMAIN_CRASHED: return MachineStatus(state: .crashed, pid: pid, detail: "crashed")
            case VIR_DOMAIN_SHUTOFF: return MachineStatus(state: .stopped, pid: nil, detail: "shutoff")
            default: return MachineStatus(state: .transitioning, pid: pid, detail: "shutdown")
            }
        } catch {
            return MachineStatus(state: .unresponsive, pid: nil, detail: error.message)
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
            try? FileManager.default.removeItem(at: Self.recordFile(directory))
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
        try? FileManager.default.removeItem(at: Self.recordFile(directory))
        SerialLog.trim(directory.serialLog, limit: MachineConfig.Console().logLimit)
        return StopOutcome(endedBy: endedBy ?? .guestShutdown, shutdownReason: reason, steps: steps)
    }

    /// Waits until the domain no longer runs (a transient domain is gone once it stopped).
    private static func waitUntilGone(_ domain: LibvirtDomain, timeout: Duration) async -> Bool {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            if !domain.isActive { return true }
            try? await Task.sleep(for: pollInterval)
        }
        return !domain.isActive
    }
}
