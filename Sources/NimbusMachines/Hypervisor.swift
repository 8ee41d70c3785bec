import Foundation
import NimbusCore

/// What runs machines: QEMU directly today, libvirt later. NimbusInstances talks only to this.
///
/// Drivers keep no state of their own: everything about a machine is read from its folder and its live
/// process each time, so any `nimbus` process can pick up a machine another one started.
public protocol Hypervisor: Sendable {
    /// `qemu`, `libvirt`.
    var name: String { get }

    /// The accelerator a machine started with `choice` would run on, and why: this host's for QEMU, the
    /// daemon host's for libvirt.
    func accelerator(for choice: AcceleratorChoice) async throws(NimbusError) -> AcceleratorDecision
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
    /// A hard reset.
    func reset(_ directory: MachineDirectory) async throws(NimbusError)
    /// Ends the machine at once (SIGKILL) and waits until its files are free.
    func kill(_ directory: MachineDirectory) async throws(NimbusError)
    /// Forgets the machine before its folder is removed for good: ends it if it runs, and drops what the
    /// hypervisor keeps of it outside the folder (libvirt: the domain's definition).
    func forget(_ directory: MachineDirectory) async throws(NimbusError)

    /// A live snapshot of the running machine (RAM, devices, disks) named `name`.
    func saveSnapshot(_ name: String, in directory: MachineDirectory) async throws(NimbusError)
    /// Returns the running machine to the live snapshot `name`.
    func loadSnapshot(_ name: String, in directory: MachineDirectory) async throws(NimbusError)
    /// Deletes the live snapshot `name`.
    func deleteSnapshot(_ name: String, in directory: MachineDirectory) async throws(NimbusError)

    /// Deletes what the stopped machine keeps outside its folder (the libvirt driver's pool volumes), before
    /// the folder itself is removed.
    func deleteStorage(_ directory: MachineDirectory) async throws(NimbusError)

    /// The machine's main disk on this host when it is not the folder's own (a libvirt pool volume), for
    /// qemu-img while the machine is stopped; nil for the folder's.
    func diskFile(_ directory: MachineDirectory) async throws(NimbusError) -> URL?
    /// The bytes the machine's main disk takes on its host when it is not the folder's own (a libvirt pool
    /// volume, on whichever host the pool is); nil for the folder's, which the caller measures itself.
    func diskAllocation(_ directory: MachineDirectory) async throws(NimbusError) -> UInt64?
}

extension Hypervisor {
    /// Asked of the full status where the driver has nothing cheaper.
    public func isRunning(_ directory: MachineDirectory) async -> Bool {
        await status(of: directory).state != .stopped
    }

    /// Nothing outside the machine folder: the QEMU driver keeps every file in it.
    public func deleteStorage(_ directory: MachineDirectory) async throws(NimbusError) {}

    /// The folder's own disk.
    public func diskFile(_ directory: MachineDirectory) async throws(NimbusError) -> URL? { nil }

    /// The folder's own disk.
    public func diskAllocation(_ directory: MachineDirectory) async throws(NimbusError) -> UInt64? { nil }

    /// A hypervisor that keeps nothing outside the folder only has to end the machine.
    public func forget(_ directory: MachineDirectory) async throws(NimbusError) {
        try await kill(directory)
    }

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
    /// The argument vector the hypervisor was started with.
    public let commandLine: [String]
    /// The host whose `sshHostPort` reaches the guest: 127.0.0.1, or a remote libvirt host.
    public var sshHost: String = "127.0.0.1"
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
}
