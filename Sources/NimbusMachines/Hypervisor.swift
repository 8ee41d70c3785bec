import Foundation
import NimbusCore

/// What runs machines: QEMU directly (`NimbusQEMU`) or through libvirt (`NimbusLibvirt`). NimbusInstances
/// talks only to this protocol, and gets drivers from `MachineDrivers`.
///
/// Drivers keep no state of their own: everything about a machine is read from its folder and its live
/// process each time, so any `nimbus` process can pick up a machine another one started. What only some
/// drivers have is a capability, nil where a driver lacks it: `storage` (disks outside the folder) and
/// `definitions` (machines defined outside the folder).
public protocol Hypervisor: Sendable {
    /// `qemu`, `libvirt`.
    var name: String { get }
    /// The host the machines run on, as `nimbus list` shows it: `local`, or a host name.
    var hostLabel: String { get }

    /// Checks, before anything is written, that machines can be started here: for libvirt, that the
    /// daemon answers. An error says how to fix it.
    func checkReachable() async throws(NimbusError)
    /// The accelerator a machine started with `choice` would run on, and why: this host's for QEMU, the
    /// daemon host's for libvirt.
    func accelerator(for choice: AcceleratorChoice) async throws(NimbusError) -> AcceleratorDecision
    /// The memory of the host the machines run on (this host for QEMU, the daemon's host for libvirt), for
    /// refusing a machine that cannot fit; nil when the host does not say.
    func hostMemory() async throws(NimbusError) -> ByteSize?
    /// What the machine in `directory` has written to its serial console, from byte `offset` of its log on:
    /// the log in the folder, or on a remote host the one its daemon keeps there. Empty when nothing more
    /// was written; from the start when the log was rotated below `offset`.
    /// nil when the machine has no log yet (never started); else the bytes and the offset to read from next.
    func serialLog(of directory: MachineDirectory, from offset: UInt64) async throws(NimbusError) -> SerialLog.Chunk?
    /// Why shares of `transport` cannot work with this driver here, or nil when they can.
    func shareProblem(_ transport: MachineConfig.Share.Transport) -> String?
    /// Starts `config` in `directory` and returns once the machine runs and its control channel answers.
    func start(_ config: MachineConfig, in directory: MachineDirectory) async throws(NimbusError) -> RunningMachine

    /// What the machine is doing now, from its live process and its control channel.
    func status(of directory: MachineDirectory) async -> MachineStatus
    /// Whether the machine's process still runs: the cheap question a wait asks over and over.
    func isRunning(_ directory: MachineDirectory) async -> Bool

    /// Stops the machine, politely first: see `StopOutcome` for the ladder. `progress` hears each step.
    func stop(
        _ directory: MachineDirectory, timeout: Duration, progress: (@Sendable (String) -> Void)?
    ) async throws(NimbusError) -> StopOutcome

    /// Pauses the vCPUs.
    func suspend(_ directory: MachineDirectory) async throws(NimbusError)
    /// Resumes the vCPUs.
    func resume(_ directory: MachineDirectory) async throws(NimbusError)
    /// Resets the machine as its reset button does: the guest boots again, the machine's process and devices
    /// stay.
    func reset(_ directory: MachineDirectory) async throws(NimbusError)
    /// Ends the machine at once (SIGKILL) and waits until its files are free.
    func kill(_ directory: MachineDirectory) async throws(NimbusError)
    /// Forgets the machine before its folder is removed for good: ends it if it runs, and drops what the
    /// driver keeps of it outside the folder (libvirt: the domain's definition).
    func forget(_ directory: MachineDirectory) async throws(NimbusError)

    /// The running machine's serial console.
    func openConsole(_ directory: MachineDirectory) async throws(NimbusError) -> any MachineConsole

    /// Disks kept outside the machine folder (libvirt pool volumes); nil when the folder holds them.
    var storage: (any MachineStorage)? { get }
    /// Machine definitions kept outside the folder (libvirt domains); nil when the folder is all there is.
    var definitions: (any MachineDefinitions)? { get }
    /// Host networks the driver's machines can join (`nimbus network`); nil when it cannot make them.
    var networks: (any MachineNetworks)? { get }

    /// What `nimbus doctor` should know of this driver on its host (helpers it needs and lacks).
    func hostFindings() -> [HostFinding]
    /// Processes this driver started for folders under `instances` that no longer hold a machine.
    func orphans(under instances: URL, isMachineFolder: (String) -> Bool) -> [OrphanProcess]
    /// What the stopped machine in `directory` left behind.
    func leftovers(of directory: MachineDirectory) -> [MachineLeftover]
    /// The helper processes (virtiofsd) serving the machine in `directory`.
    func helperPIDs(of directory: MachineDirectory) -> [Int32]
}

/// Disks a driver keeps outside the machine folder (libvirt pool volumes, on whichever host the pool is).
public protocol MachineStorage: Sendable {
    /// The machine's main disk as a file on this host, for qemu-img while the machine is stopped; nil when
    /// it is not reachable as a file here (a remote pool).
    func diskFile(_ directory: MachineDirectory) async throws(NimbusError) -> URL?
    /// The bytes the machine's main disk takes on its host.
    func diskAllocation(_ directory: MachineDirectory) async throws(NimbusError) -> UInt64?
    /// Deletes the stopped machine's disks, before its folder is removed.
    func deleteStorage(_ directory: MachineDirectory) async throws(NimbusError)
    /// Deletes the main disks (`MachineConfig.Disk.volumeKey`) the machine had whose keys are not in `keys`:
    /// the roots an upgrade's rollback or prune gave up.
    func deleteMainDisks(_ directory: MachineDirectory, keeping keys: Set<String?>) async throws(NimbusError)
    /// Makes the empty data volume `name` of `bytes` in this driver's storage (`MachineConfig.Disk.dataVolume`).
    func createDataVolume(_ name: String, size bytes: UInt64) async throws(NimbusError)
    /// Grows the data volume `name` (`MachineConfig.Disk.dataVolume`) in this driver's storage to `bytes`;
    /// false when the storage holds no such volume yet (no machine using it has started).
    func resizeDataVolume(_ name: String, to bytes: UInt64) async throws(NimbusError) -> Bool
    /// Deletes the data volume `name` from this driver's storage, when it is there.
    func deleteDataVolume(_ name: String) async throws(NimbusError)
}

extension Hypervisor {
    /// Stops the machine with the default 60-second wait for the guest.
    public func stop(_ directory: MachineDirectory) async throws(NimbusError) -> StopOutcome {
        try await stop(directory, timeout: .seconds(60), progress: nil)
    }
}

/// A machine that `start` brought up.
public struct RunningMachine: Sendable, Hashable {
    /// The hypervisor process.
    public let pid: Int32
    /// The accelerator in use and why; print `accelerator.notice` when there is one.
    public let accelerator: AcceleratorDecision
    /// The host port on 127.0.0.1 forwarded to the guest's SSH port, with user-mode networking.
    public let sshHostPort: UInt16?
    /// The QMP socket.
    public let qmpSocket: URL
    /// The VNC socket, when asked for.
    public let vncSocket: URL?
    /// How the machine was started, for a person: QEMU's argument vector, or libvirt's call.
    public let commandLine: [String]
    /// The host whose `sshHostPort` reaches the guest: 127.0.0.1, or a remote libvirt host.
    public var sshHost: String = "127.0.0.1"

    public init(
        pid: Int32, accelerator: AcceleratorDecision, sshHostPort: UInt16?, qmpSocket: URL, vncSocket: URL?,
        commandLine: [String], sshHost: String = "127.0.0.1"
    ) {
        self.pid = pid
        self.accelerator = accelerator
        self.sshHostPort = sshHostPort
        self.qmpSocket = qmpSocket
        self.vncSocket = vncSocket
        self.commandLine = commandLine
        self.sshHost = sshHost
    }
}

/// The state of a machine, read from the live process and QMP.
public struct MachineStatus: Sendable, Hashable, Codable {
    public enum State: String, Sendable, Hashable, Codable {
        /// No live process.
        case stopped
        /// The vCPUs run.
        case running
        /// Paused (suspend, or QEMU stopped it on an I/O error).
        case paused
        /// The guest panicked.
        case crashed
        /// Shutting down, or starting up (QEMU's `shutdown`, `prelaunch`, `inmigrate` states).
        case transitioning
        /// The process lives but its control socket does not answer (another client holds it).
        case unresponsive
    }

    public let state: State
    /// The live process, if any.
    public let pid: Int32?
    /// QEMU's own run state name (`running`, `paused`, `guest-panicked`, ...), when QMP answered.
    public let detail: String?

    public init(state: State, pid: Int32?, detail: String?) {
        self.state = state
        self.pid = pid
        self.detail = detail
    }
}

/// How a stop went. The ladder: ACPI power button (`system_powerdown`) and a wait for the guest's
/// SHUTDOWN up to the timeout, then QMP `quit`, then SIGTERM, then SIGKILL; each step is recorded.
public struct StopOutcome: Sendable, Hashable, Codable {
    /// The rung that ended the machine.
    public enum Rung: String, Sendable, Hashable, Codable {
        /// It was not running.
        case alreadyStopped
        /// The guest shut itself down after the power button.
        case guestShutdown
        /// QEMU quit on request.
        case quit
        /// QEMU ended on SIGTERM.
        case terminate
        /// QEMU was killed.
        case kill
    }

    public let endedBy: Rung
    /// `reason` of the SHUTDOWN event (`guest-shutdown`, `host-qmp-quit`, `host-signal`), when one came.
    public let shutdownReason: String?
    /// Each step taken, as logged.
    public let steps: [String]

    public init(endedBy: Rung, shutdownReason: String?, steps: [String]) {
        self.endedBy = endedBy
        self.shutdownReason = shutdownReason
        self.steps = steps
    }
}
