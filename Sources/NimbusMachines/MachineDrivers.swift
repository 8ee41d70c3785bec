import Foundation
import NimbusCore

/// The kinds of driver, as `--driver`, config.yaml and instance.yaml spell them.
public enum DriverKind: String, Codable, Sendable, Hashable, CaseIterable {
    /// QEMU, run by Nimbus itself on this host.
    case qemu
    /// A libvirt daemon, on this host or another.
    case libvirt
}

/// Which driver runs a machine, and where: instance.yaml's `driver`, `connect` and `pool`, checked.
///
/// The instance layer keeps and passes this value; only the driver factory (`MachineDrivers`) turns it
/// into a driver, so the instance layer never names a driver type.
public enum DriverChoice: Sendable, Hashable, CustomStringConvertible {
    /// QEMU, run by Nimbus itself on this host.
    case qemu
    /// A libvirt daemon: `connect` is its URI (the driver's default when nil), `pool` the storage pool of
    /// the machine's disks (the driver's own when nil).
    case libvirt(connect: String?, pool: String?)

    /// The drivers' names, as `--driver` and instance.yaml spell them.
    public static let names = DriverKind.allCases.map(\.rawValue)

    /// The choice of `kind` at `connect` with `pool`, or an error naming the option that does not fit it.
    public init(kind: DriverKind, connect: String? = nil, pool: String? = nil) throws(NimbusError) {
        switch kind {
        case .qemu:
            if connect != nil { throw NimbusError(.invalidArgument, "--connect needs --driver libvirt") }
            if pool != nil { throw NimbusError(.invalidArgument, "--pool needs --driver libvirt") }
            self = .qemu
        case .libvirt:
            self = .libvirt(connect: connect, pool: pool)
        }
    }

    /// The choice instance.yaml's three fields make, or an error naming the field and the fix.
    public init(name: String, connect: String?, pool: String?) throws(NimbusError) {
        guard let kind = DriverKind(rawValue: name) else {
            throw NimbusError(
                .invalidArgument,
                "driver \"\(name)\" is not one of \(Self.names.joined(separator: ", ")): use --driver qemu or --driver libvirt"
            )
        }
        try self.init(kind: kind, connect: connect, pool: pool)
    }

    /// The kind of driver, without its daemon and pool.
    public var kind: DriverKind {
        switch self {
        case .qemu: .qemu
        case .libvirt: .libvirt
        }
    }

    /// `qemu`, `libvirt`.
    public var name: String { kind.rawValue }

    /// The daemon's URI as given, for a driver that connects to one.
    public var connect: String? {
        guard case .libvirt(let connect, _) = self else { return nil }
        return connect
    }

    /// The storage pool as given, for a driver that keeps disks in one.
    public var pool: String? {
        guard case .libvirt(_, let pool) = self else { return nil }
        return pool
    }

    public var description: String { connect.map { "\(name) at \($0)" } ?? name }
}

/// Makes drivers: the one seam between the instance layer and the driver modules, wired by the CLI
/// (`NimbusDrivers.StandardDrivers`). A new driver is a target of its own and a case here and there.
public protocol MachineDrivers: Sendable {
    /// The driver for `choice`; `progress` hears what it does at length (creating a pool, an upload).
    func driver(for choice: DriverChoice, progress: @escaping @Sendable (String) -> Void) -> any Hypervisor

    /// One driver of each kind at this host's defaults, for what concerns the host (`nimbus doctor`).
    func hostDrivers() -> [any Hypervisor]

    /// The driver of the place `place` (a `Hypervisor.place`) that keeps machine definitions, for finding
    /// machines whose folder is gone; nil when no driver knows it.
    func definitions(at place: String) -> (any MachineDefinitions)?
}

/// A two-way byte stream to a machine's serial console. `receive` blocks; `close` wakes it.
public protocol MachineConsole: Sendable {
    /// Sends `bytes` to the guest's serial port; false once the stream has ended.
    func send(_ bytes: UnsafeRawBufferPointer) -> Bool
    /// Waits for what the guest prints; 0 at the end of the stream (the machine stopped, or `close`).
    func receive(_ buffer: UnsafeMutableRawBufferPointer) -> Int
    /// Ends the stream.
    func close()
}

/// A process a driver started for a machine folder that no longer exists (`nimbus doctor`).
public struct OrphanProcess: Sendable, Hashable {
    /// `QEMU`, `virtiofsd`.
    public var program: String
    public var pid: Int32
    /// The folder it was started for.
    public var folder: String

    public init(program: String, pid: Int32, folder: String) {
        self.program = program
        self.pid = pid
        self.folder = folder
    }
}

/// Something a stopped machine left in or for its folder (a stale pidfile, a helper with no QEMU to serve),
/// which `nimbus doctor --fix` clears with `clear`.
public struct MachineLeftover: Sendable {
    /// What it is, for a person: "stale qemu.pid of a QEMU that is gone".
    public var description: String
    /// What clearing it did, for a person: "removed", "ended".
    public var clearedAs: String
    public var clear: @Sendable () -> Void

    public init(_ description: String, clearedAs: String, clear: @escaping @Sendable () -> Void) {
        self.description = description
        self.clearedAs = clearedAs
        self.clear = clear
    }
}

/// A finding of a driver about its host, for `nimbus doctor`.
public struct HostFinding: Sendable, Hashable {
    public var subject: String
    public var detail: String
    public var ok: Bool
    /// Not a failure: something works less well (a fallback is used).
    public var warning: Bool

    public init(subject: String, detail: String, ok: Bool, warning: Bool = false) {
        self.subject = subject
        self.detail = detail
        self.ok = ok
        self.warning = warning
    }
}

// MARK: - Machines defined outside their folder

/// A driver whose machines are defined outside their folder (libvirt's persistent domains), so that a
/// machine can outlive its folder: the owner stores opaque annotations with the definition, lists the
/// definitions of a place, and rebuilds a lost folder from one.
public protocol MachineDefinitions: Sendable {
    /// The place the definitions live (a daemon's URI), as `Hypervisor.place` names it.
    var place: String { get }
    /// Every Nimbus machine defined at the place.
    func definedMachines() async throws(NimbusError) -> [DefinedMachine]
    /// What is defined at the place under the name a machine called `machine` would have.
    func definition(of machine: String) async throws(NimbusError) -> DefinitionLookup
    /// Makes `directory` the folder of `machine` (which names it): the driver finds it there again.
    func adopt(_ machine: DefinedMachine, in directory: MachineDirectory) async throws(NimbusError)
    /// Replaces the owner's annotations kept with the definition of the machine in `directory`.
    func annotate(_ directory: MachineDirectory, _ annotations: [String: String]) async throws(NimbusError)
}

/// What `MachineDefinitions.definition(of:)` found.
public enum DefinitionLookup: Sendable, Hashable {
    /// Nothing of that name.
    case none
    /// A definition of that name that Nimbus did not make: never touched.
    case foreign(String)
    /// Nimbus's machine.
    case nimbus(DefinedMachine)
}

/// A Nimbus machine as its definition records it.
public struct DefinedMachine: Sendable, Hashable {
    /// The place it is defined (a daemon's URI).
    public var place: String
    /// The place as `nimbus list` shows its host: `local`, or a host name.
    public var hostLabel: String
    /// Its name at the place (`nimbus-NAME` for libvirt).
    public var definitionName: String
    /// The machine's (instance's) name.
    public var name: String
    /// The machine folder on the host that defined it.
    public var folder: String
    /// The host that defined it.
    public var origin: String
    /// The host port forwarded to the guest's SSH at the last start.
    public var sshPort: UInt16?
    /// The owner's annotations.
    public var annotations: [String: String]
    /// Whether it runs.
    public var state: MachineStatus.State
    /// Files of its definition (disks, seed, NVRAM) that do not exist, where the host can tell.
    public var missingFiles: [String]
    /// How the driver describes it to a person: "libvirt domain nimbus-web on qemu:///system".
    public var label: String

    public init(
        place: String, hostLabel: String, definitionName: String, name: String, folder: String, origin: String,
        sshPort: UInt16?, annotations: [String: String], state: MachineStatus.State, missingFiles: [String],
        label: String
    ) {
        self.place = place
        self.hostLabel = hostLabel
        self.definitionName = definitionName
        self.name = name
        self.folder = folder
        self.origin = origin
        self.sshPort = sshPort
        self.annotations = annotations
        self.state = state
        self.missingFiles = missingFiles
        self.label = label
    }
}
