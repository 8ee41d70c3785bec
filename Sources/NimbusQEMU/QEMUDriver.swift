import Foundation
import NimbusCore
import NimbusMachines
import NimbusQMP

#if canImport(Glibc)
    import Glibc
#endif

/// Runs machines with QEMU directly: one detached `qemu-system-x86_64` per machine, controlled over QMP.
///
/// QEMU is started with `-daemonize`: it checks its whole command line, opens every file and socket,
/// reports any failure on stderr and exits non-zero, or forks into a session of its own, writes its
/// pidfile, and only then lets the process Nimbus started exit 0. So `start` learns success or QEMU's
/// own error without polling, and the CLI can exit while the machine runs on.
public struct QEMUDriver: Hypervisor {
    public let name = "qemu"
    /// The QEMU program: a path, or a name found on PATH.
    public var executable: String
    /// Where the accelerator facts are cached (NimbusPaths.hostFacts); nil probes every time.
    public var hostFactsCache: URL?
    /// How long `start` waits for QMP to answer once QEMU has daemonized.
    public var monitorTimeout: Duration = .seconds(10)

    public init(executable: String = QEMUDriver.program(), hostFactsCache: URL?) {
        self.executable = executable
        self.hostFactsCache = hostFactsCache
    }

    /// The QEMU program machines run on: `NIMBUS_QEMU` (the path of another `qemu-system-x86_64`, like a newer
    /// QEMU built or unpacked beside the system's; Lima's `QEMU_SYSTEM_X86_64` does the same), else
    /// `qemu-system-x86_64` on PATH. libvirt runs the emulator it knows, whatever this says.
    public static func program(environment: [String: String] = ProcessInfo.processInfo.environment) -> String {
        if let path = environment["NIMBUS_QEMU"], !path.isEmpty { return path }
        return systemProgram
    }

    /// The distribution's QEMU, found on PATH.
    public static let systemProgram = "qemu-system-x86_64"

    /// The error for a QEMU program that cannot be run: the variable that named it, or the package to install.
    static func missing(_ executable: String) -> NimbusError {
        guard executable == systemProgram else {
            return NimbusError(
                .unsupported,
                "NIMBUS_QEMU names \(executable), which is not an executable file: point it at a qemu-system-x86_64, or unset it to use the one on PATH"
            )
        }
        return NimbusError(
            .unsupported, "qemu-system-x86_64 is not installed: install it with `apt-get install qemu-system-x86`")
    }

    /// A driver using the host facts cache of `paths`.
    public init(paths: NimbusPaths) {
        self.init(hostFactsCache: paths.hostFacts)
    }

    // MARK: start

    public func accelerator(for choice: AcceleratorChoice) async throws(NimbusError) -> AcceleratorDecision {
        try AcceleratorProbe.resolve(choice, cache: hostFactsCache)
    }

    public func start(_ config: MachineConfig, in directory: MachineDirectory) async throws(NimbusError)
        -> RunningMachine
    {
        try config.validate()
        // A QEMU killed a moment ago may still be exiting: its memory is gone (/proc shows no command line)
        // while its files, the disk's write lock among them, are not closed yet; a start then fails on that
        // lock (seen in CI: `kill -9` of QEMU, then `nimbus start` at once on a busy host). Wait for it to end.
        if let pid = PIDFile(directory.pidFile.path).livePID {
            let deadline = ContinuousClock.now + .seconds(30)
            while PIDFile.isAlive(pid), QEMUProcess(pid: pid).commandLine.isEmpty, ContinuousClock.now < deadline {
                try? await Task.sleep(for: .milliseconds(100))
            }
        }
        if let running = QEMUProcess.find(in: directory) {
            throw NimbusError(.invalidState, "machine \(config.name) is already running (QEMU pid \(running.pid))")
        }
        let decision = try await accelerator(for: config.accelerator)
        // Under TCG microvm offers a stock kernel no clock to calibrate against (no kvm-clock, HPET or ACPI
        // PM timer; the PIT alone does not do): Debian's 6.1 kernel stops at "tsc: Unable to calibrate
        // against PIT" with or without pit=on. Refuse rather than hang.
        if config.machineType == .microvm, decision.accelerator == .tcg {
            throw NimbusError(
                .unsupported,
                "the microvm machine type needs KVM, and this machine runs on TCG (\(decision.reason)): use the q35 machine type"
            )
        }
        guard let qemu = ProgramRunner.find(executable) else { throw Self.missing(executable) }
        do {
            try FileManager.default.createDirectory(at: directory.url, withIntermediateDirectories: true)
        } catch {
            throw NimbusError(.io, "could not create \(directory.url.path)", cause: error)
        }
        removeRuntimeFiles(directory)
        try await prepareFirmware(config, directory)
        SerialLog.rotate(directory, limit: config.console.logLimit)
        // QEMU connects to each virtiofsd's socket as it starts: they must listen first.
        try await Virtiofsd.startAll(config, in: directory)

        let pickPort = config.network.mode == .user && config.network.forwardSSH && config.network.sshHostPort == nil
        var sshHostPort: UInt16? = nil
        var commandLine: QEMUCommandLine
        var attempt = 0
        while true {
            attempt += 1
            if config.network.mode == .user && config.network.forwardSSH {
                if let fixed = config.network.sshHostPort {
                    sshHostPort = fixed
                } else {
                    sshHostPort = try Loopback.requireFreePort()
                }
            }
            commandLine = try QEMUCommandLine.machine(
                config, in: directory, accelerator: decision.accelerator, sshHostPort: sshHostPort,
                executable: qemu)
            let result = try await ProgramRunner.output(
                qemu, commandLine.arguments, workingDirectory: directory.url)
            if result.status == 0 { break }
            let failure = MachineError.classify(status: result.status, standardError: result.standardError)
            // A free port found by binding port 0 can be taken again before QEMU binds it; retry that race.
            if case .portInUse(let port, _) = failure, pickPort, port == sshHostPort, attempt < 3 {
                // A virtiofsd serves one connection: the QEMU that failed may have taken it.
                try await Virtiofsd.startAll(config, in: directory)
                continue
            }
            removeRuntimeFiles(directory)
            throw failure.nimbusError(machine: config.name)
        }

        guard let process = QEMUProcess.find(in: directory) else {
            throw NimbusError(
                .processFailed,
                "QEMU started machine \(config.name) but exited at once; see \(directory.serialLog.path)")
        }
        // QEMU creates the socket with the umask's mode; only the owner may drive the machine.
        chmod(directory.qmpSocket.path, 0o600)
        chmod(directory.consoleSocket.path, 0o600)
        if config.vnc { chmod(directory.vncSocket.path, 0o600) }
        do {
            let client = try await Self.connect(directory, timeout: monitorTimeout)
            _ = try await client.queryStatus()
            await client.close()
        } catch {
            // Nothing half-running: a machine whose monitor never answers is ended, its pidfile kept until it
            // has gone (its threads hold the disk's lock until then).
            process.signal(SIGKILL)
            if await process.waitForExit(timeout: .seconds(30)) { removeRuntimeFiles(directory) }
            throw NimbusError(
                .processFailed, "QEMU started machine \(config.name) but its monitor did not answer", cause: error)
        }
        return RunningMachine(
            pid: process.pid, accelerator: decision, sshHostPort: sshHostPort, qmpSocket: directory.qmpSocket,
            vncSocket: config.vnc ? directory.vncSocket : nil, commandLine: commandLine.render())
    }

    /// Gives the machine its own UEFI variable store, once: a qcow2 copy of the template, kept across
    /// restarts so boot entries the guest writes survive.
    private func prepareFirmware(_ config: MachineConfig, _ directory: MachineDirectory) async throws(NimbusError) {
        guard case .uefi(_, let template) = config.firmware,
            !FileManager.default.fileExists(atPath: directory.firmwareVariables.path)
        else { return }
        guard FileManager.default.fileExists(atPath: template) else {
            throw NimbusError(
                .unsupported,
                "the UEFI variable store template \(template) does not exist: install OVMF (`apt-get install ovmf`) or use --firmware bios"
            )
        }
        let temporary = directory.url.appending(path: ".efi-vars.\(getpid()).qcow2")
        try await ProgramRunner.run(
            "qemu-img", ["convert", "-q", "-f", "raw", "-O", "qcow2", template, temporary.path])
        guard rename(temporary.path, directory.firmwareVariables.path) == 0 else {
            try? FileManager.default.removeItem(at: temporary)
            throw NimbusError(.io, "could not create \(directory.firmwareVariables.path)")
        }
    }

    /// Removes the sockets and pidfile a dead QEMU left behind (it cannot unlink a socket it bound by a
    /// relative path once it has changed to /), and ends the virtiofsd processes it no longer uses.
    private func removeRuntimeFiles(_ directory: MachineDirectory) {
        for file in [directory.qmpSocket, directory.consoleSocket, directory.vncSocket, directory.pidFile] {
            unlink(file.path)
        }
        Virtiofsd.stopAll(in: directory)
    }

    // MARK: QMP

    /// Connects to the machine's QMP socket. A socket path longer than `sun_path` (108 bytes, a deep
    /// NIMBUS_HOME) is reached through /proc/self/fd/N/qmp.sock, N being a descriptor of the
    /// folder: short whatever the folder's depth, and no chdir in a threaded process.
    public static func connect(_ directory: MachineDirectory, timeout: Duration = .seconds(10))
        async throws(NimbusError) -> QMPClient
    {
        let path = directory.qmpSocket.path
        do throws(QMPError) {
            if path.utf8.count < 100 { return try await QMPClient.connect(path: path, timeout: timeout) }
            let folder = open(directory.url.path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
            guard folder >= 0 else {
                throw QMPError.connectionFailed(path: path, reason: String(cString: strerror(errno)))
            }
            defer { close(folder) }
            return try await QMPClient.connect(
                path: "/proc/self/fd/\(folder)/\(MachineDirectory.qmpSocketName)", timeout: timeout)
        } catch {
            throw NimbusError(.network, "could not talk to QEMU's monitor at \(path): \(error)", cause: error)
        }
    }

    /// Runs `body` with a monitor connection to the running machine in `directory`.
    private func withMonitor<T: Sendable>(
        _ directory: MachineDirectory, _ action: String, _ body: (QMPClient) async throws(QMPError) -> T
    ) async throws(NimbusError) -> T {
        guard QEMUProcess.find(in: directory) != nil else {
            throw NimbusError(.invalidState, "cannot \(action): the machine in \(directory.url.path) is not running")
        }
        let client = try await Self.connect(directory)
        do {
            let result = try await body(client)
            await client.close()
            return result
        } catch {
            await client.close()
            throw NimbusError(.processFailed, "QEMU could not \(action): \(error)", cause: error)
        }
    }

    // MARK: status and control

    /// How long `status` waits for the monitor before calling the machine unresponsive. QEMU greets from its
    /// main loop, which on a loaded TCG host (four guests on two cores in CI) was seen to take over 3 s.
    static let statusTimeout: Duration = .seconds(10)

    public func status(of directory: MachineDirectory) async -> MachineStatus {
        guard let process = QEMUProcess.find(in: directory) else {
            return MachineStatus(state: .stopped, pid: nil, detail: nil)
        }
        do {
            let client = try await Self.connect(directory, timeout: Self.statusTimeout)
            let answer: Result<QMPStatus, QMPError>
            do {
                answer = .success(try await client.queryStatus())
            } catch {
                answer = .failure(error)
            }
            await client.close()
            let status = try answer.get()
            let state: MachineStatus.State
            switch status.status {
            case "running": state = .running
            case "paused", "suspended", "io-error", "watchdog", "debug", "save-vm", "restore-vm": state = .paused
            case "guest-panicked", "internal-error": state = .crashed
            default: state = status.running ? .running : .transitioning
            }
            return MachineStatus(state: state, pid: process.pid, detail: status.status)
        } catch {
            return MachineStatus(state: .unresponsive, pid: process.pid, detail: String(describing: error))
        }
    }

    /// From the pidfile and /proc alone: no monitor connection, so a wait can ask every 200 ms for free.
    public func isRunning(_ directory: MachineDirectory) async -> Bool {
        QEMUProcess.find(in: directory) != nil
    }

    public func suspend(_ directory: MachineDirectory) async throws(NimbusError) {
        try await withMonitor(directory, "suspend the machine") { client throws(QMPError) in try await client.stop() }
    }

    public func resume(_ directory: MachineDirectory) async throws(NimbusError) {
        try await withMonitor(directory, "resume the machine") { client throws(QMPError) in try await client.cont() }
    }

    public func reset(_ directory: MachineDirectory) async throws(NimbusError) {
        try await withMonitor(directory, "reset the machine") { client throws(QMPError) in
            try await client.systemReset()
        }
    }

    public func saveSnapshot(_ name: String, in directory: MachineDirectory) async throws(NimbusError) {
        try await withMonitor(directory, "save snapshot \(name)") { client throws(QMPError) in
            try await client.saveSnapshot(name)
        }
    }

    public func loadSnapshot(_ name: String, in directory: MachineDirectory) async throws(NimbusError) {
        try await withMonitor(directory, "load snapshot \(name)") { client throws(QMPError) in
            try await client.loadSnapshot(name)
        }
    }

    public func deleteSnapshot(_ name: String, in directory: MachineDirectory) async throws(NimbusError) {
        try await withMonitor(directory, "delete snapshot \(name)") { client throws(QMPError) in
            try await client.deleteSnapshot(name)
        }
    }

    public func kill(_ directory: MachineDirectory) async throws(NimbusError) {
        guard let process = QEMUProcess.find(in: directory) else { return }
        process.signal(SIGKILL)
        guard await process.waitForExit(timeout: .seconds(30)) else {
            throw NimbusError(.timeout, "QEMU (pid \(process.pid)) did not end after SIGKILL")
        }
        removeRuntimeFiles(directory)
    }

    // MARK: stop

    /// How long each forceful rung waits for QEMU to go.
    static let rungTimeout: Duration = .seconds(5)

    public func stop(
        _ directory: MachineDirectory, timeout: Duration = .seconds(60), progress: (@Sendable (String) -> Void)? = nil
    ) async throws(NimbusError) -> StopOutcome {
        var steps: [String] = []
        func log(_ step: String) {
            steps.append(step)
            progress?(step)
        }
        guard let process = QEMUProcess.find(in: directory) else {
            removeRuntimeFiles(directory)
            return StopOutcome(endedBy: .alreadyStopped, shutdownReason: nil, steps: ["not running"])
        }
        var shutdownReason: String?
        var endedBy: StopOutcome.Rung?

        if let client = try? await Self.connect(directory, timeout: .seconds(5)) {
            let events = client.events()
            do {
                try await client.systemPowerdown()
                log(
                    "pressed the ACPI power button (system_powerdown); waiting up to \(timeout) for the guest to shut down"
                )
                let shutdown = await Self.firstShutdown(events, timeout: timeout)
                shutdownReason = shutdown?.reason
                if shutdown != nil, await process.waitForExit(timeout: Self.rungTimeout) {
                    log("the guest shut down (\(shutdownReason ?? "no reason given"))")
                    endedBy = .guestShutdown
                } else if process.isAlive {
                    log("no shutdown within \(timeout); sending quit")
                    let afterQuit = client.events()
                    try? await client.quit()
                    shutdownReason = await Self.firstShutdown(afterQuit, timeout: Self.rungTimeout)?.reason
                    if await process.waitForExit(timeout: Self.rungTimeout) {
                        log("QEMU quit")
                        endedBy = .quit
                    }
                } else {
                    log("QEMU ended")
                    endedBy = .guestShutdown
                }
            } catch {
                log("the monitor failed (\(error)); falling back to signals")
            }
            await client.close()
        } else {
            log("the monitor does not answer; falling back to signals")
        }
        if endedBy == nil, process.isAlive {
            log("sending SIGTERM to QEMU (pid \(process.pid))")
            process.signal(SIGTERM)
            if await process.waitForExit(timeout: Self.rungTimeout) { endedBy = .terminate }
        }
        if endedBy == nil, process.isAlive {
            log("sending SIGKILL to QEMU (pid \(process.pid))")
            process.signal(SIGKILL)
            guard await process.waitForExit(timeout: .seconds(30)) else {
                throw NimbusError(.timeout, "QEMU (pid \(process.pid)) did not end even after SIGKILL")
            }
            endedBy = .kill
        }
        removeRuntimeFiles(directory)
        if let limit = Self.logLimit(directory) { SerialLog.trim(directory.serialLog, limit: limit) }
        return StopOutcome(endedBy: endedBy ?? .guestShutdown, shutdownReason: shutdownReason, steps: steps)
    }

    /// The serial log limit; the folder does not know the config, so the default applies at stop.
    private static func logLimit(_ directory: MachineDirectory) -> ByteSize? {
        MachineConfig.Console().logLimit
    }

    /// The first SHUTDOWN event within `timeout`; nil when none came or the stream ended (QEMU gone).
    private static func firstShutdown(_ events: AsyncStream<QMPEvent>, timeout: Duration) async -> QMPEvent? {
        await withTaskGroup(of: QMPEvent?.self) { group in
            group.addTask {
                for await event in events where event.kind == .shutdown { return event }
                return nil
            }
            group.addTask {
                try? await Task.sleep(for: timeout)
                return nil
            }
            let first = await group.next() ?? nil
            group.cancelAll()
            return first
        }
    }
}
