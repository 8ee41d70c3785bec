import Foundation
import NimbusCore
import NimbusMachines

#if canImport(Glibc)
    import Glibc
#endif

/// What the libvirt driver says about its host, its console, and the capabilities only it has: disks in
/// a storage pool (`storage`) and persistent domains that outlive their folder (`definitions`).
extension LibvirtDriver: MachineStorage {
    public var hostLabel: String { Self.hostLabel(uri) }
    public var storage: (any MachineStorage)? { self }
    public var definitions: (any MachineDefinitions)? { LibvirtDefinitions(uri: uri) }
    public var networks: (any MachineNetworks)? { LibvirtNetworks(uri: uri) }

    public func checkReachable() async throws(NimbusError) {
        try await LibvirtExecutor.run(uri) { () throws(NimbusError) in try checkConnection() }
    }

    /// The daemon's host's memory, asked of libvirt, so a remote host is judged by its own.
    public func hostMemory() async throws(NimbusError) -> ByteSize? {
        try await LibvirtExecutor.run(uri) { () throws(NimbusError) in
            try LibvirtRemote.memory(connection: LibvirtConnection(uri: uri))
        }
    }

    /// The log in the folder on a local daemon (virtlogd appends to the file Nimbus made); on a remote one,
    /// the daemon's own file on that host, over SSH.
    public func serialLog(of directory: MachineDirectory, from offset: UInt64) async throws(NimbusError)
        -> SerialLog.Chunk?
    {
        guard let record = Self.record(directory), !Self.isLocal(record.uri) else {
            return try SerialLog.read(directory.serialLog, from: offset)
        }
        return try await LibvirtRemote.readFile(
            LibvirtRemote.serialLogPath(domain: record.domain), from: offset, uri: record.uri)
    }

    /// The domain's state is the only liveness libvirt offers (one call to the daemon).
    public func isRunning(_ directory: MachineDirectory) async -> Bool {
        await status(of: directory).state != .stopped
    }

    /// libvirtd starts virtiofsd itself, and says so at start if it cannot.
    public func shareProblem(_ transport: MachineConfig.Share.Transport) -> String? { nil }

    public func openConsole(_ directory: MachineDirectory) async throws(NimbusError) -> any MachineConsole {
        try await LibvirtExecutor.run(uri) { () throws(NimbusError) in try openConsole(directory, force: true) }
    }

    /// On a local daemon: whether libvirt's QEMU user can open /dev/kvm (see `kvmAccess`).
    public func hostFindings() -> [HostFinding] {
        guard Self.isLocal(uri), ProgramRunner.find("libvirtd") != nil, let finding = Self.kvmAccess() else {
            return []
        }
        return [finding]
    }

    /// libvirt's QEMU processes are the daemon's; a domain whose folder is gone is found by `definitions`.
    public func orphans(under instances: URL, isMachineFolder: (String) -> Bool) -> [OrphanProcess] { [] }
    public func leftovers(of directory: MachineDirectory) -> [MachineLeftover] { [] }
    public func helperPIDs(of directory: MachineDirectory) -> [Int32] { [] }

    /// Whether libvirt's QEMU user can open `device`: nil when the device or the user does not exist.
    ///
    /// libvirtd probes QEMU as root but checks /dev/kvm as the user it runs QEMU as (`libvirt-qemu` on Debian).
    /// Without udev (containers, minimal VMs) /dev/kvm stays root's alone: root's probe finds KVM, the user's
    /// check does not, and libvirtd takes its capabilities cache for stale and probes QEMU again at every call,
    /// so each domain start takes minutes. A warning: the QEMU driver does not care.
    public static func kvmAccess(device: String = "/dev/kvm", user: String = "libvirt-qemu") -> HostFinding? {
        var status = stat()
        guard stat(device, &status) == 0, let account = getpwnam(user) else { return nil }
        let uid = account.pointee.pw_uid
        let primary = account.pointee.pw_gid
        var count: Int32 = 64
        var groups = [gid_t](repeating: 0, count: Int(count))
        if getgrouplist(account.pointee.pw_name, primary, &groups, &count) < 0 {
            groups = [gid_t](repeating: 0, count: Int(count))
            _ = getgrouplist(account.pointee.pw_name, primary, &groups, &count)
        }
        let member = groups.prefix(Int(max(count, 0))).contains(status.st_gid) || primary == status.st_gid
        let readWrite: mode_t = status.st_uid == uid ? 0o600 : member ? 0o060 : 0o006
        if status.st_mode & readWrite == readWrite {
            return HostFinding(subject: "libvirt and \(device)", detail: "\(user) can open it", ok: true)
        }
        let group = getgrgid(status.st_gid).map { String(cString: $0.pointee.gr_name) } ?? String(status.st_gid)
        let mode = String(status.st_mode & 0o777, radix: 8)
        return HostFinding(
            subject: "libvirt and \(device)",
            detail:
                "\(user), the user libvirt runs QEMU as, cannot open it (mode \(mode), group \(group)): libvirtd will probe QEMU again at every call and each libvirt start takes minutes; do what udev does on a normal host: `chgrp kvm \(device) && chmod 0660 \(device)`",
            ok: false, warning: true)
    }
}

/// The Nimbus domains of one daemon, as `MachineDefinitions`.
public struct LibvirtDefinitions: MachineDefinitions {
    public let uri: String

    public init(uri: String) { self.uri = uri }

    public var place: String { uri }

    public func definedMachines() async throws(NimbusError) -> [DefinedMachine] {
        try await LibvirtExecutor.run(uri) { () throws(NimbusError) in
            try LibvirtDriver.nimbusDomains(uri: uri).map(Self.machine)
        }
    }

    public func definition(of machine: String) async throws(NimbusError) -> DefinitionLookup {
        let lookup = try await LibvirtExecutor.run(uri) { () throws(NimbusError) in
            try LibvirtDriver.domain(forInstance: machine, uri: uri)
        }
        return switch lookup {
        case .none: .none
        case .foreign(let domain): .foreign("libvirt domain \(domain) on \(uri)")
        case .nimbus(let summary): .nimbus(Self.machine(summary))
        }
    }

    public func adopt(_ machine: DefinedMachine, in directory: MachineDirectory) async throws(NimbusError) {
        try await LibvirtExecutor.run(machine.place) { () throws(NimbusError) in
            try LibvirtDriver.adopt(machine, in: directory)
        }
    }

    public func annotate(_ directory: MachineDirectory, _ annotations: [String: String]) async throws(NimbusError) {
        try await LibvirtExecutor.run(uri) { () throws(NimbusError) in
            try LibvirtDriver(uri: uri, hostFactsCache: nil).annotate(directory, annotations)
        }
    }

    static func machine(_ summary: LibvirtDomainSummary) -> DefinedMachine {
        DefinedMachine(
            place: summary.uri, hostLabel: LibvirtDriver.hostLabel(summary.uri), definitionName: summary.domain,
            name: summary.metadata.name, folder: summary.metadata.folder, origin: summary.metadata.origin,
            sshPort: summary.metadata.sshPort, annotations: summary.metadata.annotations, state: summary.state,
            missingFiles: summary.missingFiles, label: "libvirt domain \(summary.domain) on \(summary.uri)")
    }
}
