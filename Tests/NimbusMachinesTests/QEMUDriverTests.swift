import Foundation
import NimbusCore
import NimbusQMP
import NimbusTestSupport
import Testing

@testable import NimbusMachines
@testable import NimbusQEMU

#if canImport(Glibc)
    import Glibc
#endif

/// A machine folder under a fresh NIMBUS_HOME and a driver; whatever was started is killed at the end.
struct MachineFixture {
    let home: TemporaryDirectory
    let directory: MachineDirectory
    let driver: QEMUDriver

    /// A machine that needs no guest image: SeaBIOS finds nothing to boot and waits. Small and quick.
    static func bareConfig(_ name: String = "bare") -> MachineConfig {
        var config = MachineConfig(name: name)
        config.firmware = .bios
        config.cpus = 1
        config.memory = .mebibytes(128)
        return config
    }

    static func with<T>(label: String = "nimbus-machine", _ body: (MachineFixture) async throws -> T) async throws -> T
    {
        let home = try TemporaryDirectory(label)
        defer { home.remove() }
        let directory = MachineDirectory(home.paths.instances.appending(path: "m"))
        // The system's QEMU, whatever NIMBUS_QEMU says (scripts/test gives the guest scenarios a newer one).
        let driver = QEMUDriver(executable: QEMUDriver.systemProgram, hostFactsCache: home.paths.hostFacts)
        let fixture = MachineFixture(home: home, directory: directory, driver: driver)
        defer {
            if let process = QEMUProcess.find(in: directory) { process.signal(SIGKILL) }
        }
        return try await body(fixture)
    }
}

@Suite(
    "QEMU driver with a real QEMU",
    .serialized,
    .requires(.programs("qemu-system-x86_64", "qemu-img"))
)
struct QEMUDriverTests {
    /// A slot, held while each test runs its QEMU: with guests booting under TCG beside it, a QEMU outside
    /// the slots has waited over 10 s for its monitor's greeting on this 2-core host (session 8's CI, when a
    /// test booting two guests could run beside it; such tests now take two slots). One slot, expected short:
    /// these tests go after the guest tests waiting, in the slots they leave.
    let guestSlot: GuestSlot

    init() async throws { guestSlot = try await GuestSlot(expectedSeconds: 10) }
    @Test(
        "start runs QEMU detached in its own session with a 0600 QMP socket; status, suspend, resume, reset follow the live machine"
    )
    func lifecycle() async throws {
        try await MachineFixture.with { fixture in
            let machine = try await fixture.driver.start(MachineFixture.bareConfig(), in: fixture.directory)
            #expect(machine.accelerator.accelerator == .tcg)
            #expect(machine.sshHostPort != nil)
            // QEMU forks, calls setsid, and forks again: its session is not ours.
            #expect(getsid(machine.pid) != getsid(0))
            var info = stat()
            #expect(stat(fixture.directory.qmpSocket.path, &info) == 0)
            #expect(info.st_mode & 0o777 == 0o600)
            #expect(stat(fixture.directory.consoleSocket.path, &info) == 0)
            #expect(info.st_mode & 0o777 == 0o600)
            #expect(try String(contentsOf: fixture.directory.pidFile, encoding: .utf8).contains("\(machine.pid)"))

            #expect(
                await fixture.driver.status(of: fixture.directory)
                    == MachineStatus(state: .running, pid: machine.pid, detail: "running"))
            try await fixture.driver.suspend(fixture.directory)
            #expect(await fixture.driver.status(of: fixture.directory).state == .paused)
            try await fixture.driver.resume(fixture.directory)
            #expect(await fixture.driver.status(of: fixture.directory).state == .running)
            try await fixture.driver.reset(fixture.directory)

            // SeaBIOS does not act on the ACPI power button, so the ladder goes on to quit.
            let outcome = try await fixture.driver.stop(fixture.directory, timeout: .seconds(1), progress: nil)
            #expect(outcome.endedBy == .quit)
            #expect(outcome.shutdownReason == "host-qmp-quit")
            #expect(outcome.steps.first?.contains("system_powerdown") == true)
            #expect(await fixture.driver.status(of: fixture.directory).state == .stopped)
            #expect(!FileManager.default.fileExists(atPath: fixture.directory.qmpSocket.path))
            #expect(!FileManager.default.fileExists(atPath: fixture.directory.pidFile.path))
            await #expect(throws: NimbusError.self) { try await fixture.driver.suspend(fixture.directory) }
        }
    }

    @Test("a second start of a running machine is refused")
    func alreadyRunning() async throws {
        try await MachineFixture.with { fixture in
            let machine = try await fixture.driver.start(MachineFixture.bareConfig(), in: fixture.directory)
            do {
                _ = try await fixture.driver.start(MachineFixture.bareConfig(), in: fixture.directory)
                Issue.record("started twice")
            } catch let error as NimbusError {
                #expect(error.code == .invalidState)
                #expect(error.message.contains("already running (QEMU pid \(machine.pid))"))
            }
            try await fixture.driver.kill(fixture.directory)
            #expect(await fixture.driver.status(of: fixture.directory).state == .stopped)
        }
    }

    @Test("a bad option comes back as invalid-argument carrying QEMU's own stderr")
    func badOption() async throws {
        try await MachineFixture.with { fixture in
            var config = MachineFixture.bareConfig()
            config.extraArguments = ["-no-such-option"]
            do {
                _ = try await fixture.driver.start(config, in: fixture.directory)
                Issue.record("QEMU accepted a bogus option")
            } catch let error as NimbusError {
                #expect(error.code == .invalidArgument)
                let cause = try #require(error.cause as? MachineError)
                #expect(cause == .invalidOption(standardError: "qemu-system-x86_64: -no-such-option: invalid option"))
            }
            #expect(!FileManager.default.fileExists(atPath: fixture.directory.pidFile.path))
        }
    }

    @Test("a missing firmware file is not-found carrying QEMU's stderr that names it")
    func missingFirmware() async throws {
        try await MachineFixture.with { fixture in
            var config = MachineFixture.bareConfig()
            config.firmware = .uefi(code: "/nonexistent/OVMF_CODE_4M.fd")
            do {
                _ = try await fixture.driver.start(config, in: fixture.directory)
                Issue.record("QEMU started without its firmware")
            } catch let error as NimbusError {
                #expect(error.code == .notFound)
                let cause = try #require(error.cause as? MachineError)
                guard case .fileNotFound(let stderr) = cause else {
                    Issue.record("wrong cause \(cause)")
                    return
                }
                #expect(stderr.contains("Could not open '/nonexistent/OVMF_CODE_4M.fd'"))
            }
        }
    }

    @Test("a forwarded host port already taken is a network error naming the port, with QEMU's stderr")
    func portTaken() async throws {
        try await MachineFixture.with { fixture in
            let listener = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            defer { close(listener) }
            var address = sockaddr_in()
            address.sin_family = sa_family_t(AF_INET)
            address.sin_addr.s_addr = inet_addr("127.0.0.1")
            var length = socklen_t(MemoryLayout<sockaddr_in>.size)
            let bound = withUnsafeMutablePointer(to: &address) { pointer in
                pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { socketAddress in
                    bind(listener, socketAddress, length) == 0 && listen(listener, 1) == 0
                        && getsockname(listener, socketAddress, &length) == 0
                }
            }
            try #require(bound)
            let port = UInt16(bigEndian: address.sin_port)
            var config = MachineFixture.bareConfig()
            config.network.forwards = [.init(hostPort: port, guestPort: 80)]
            do {
                _ = try await fixture.driver.start(config, in: fixture.directory)
                Issue.record("QEMU started on a taken port")
            } catch let error as NimbusError {
                #expect(error.code == .network)
                #expect(error.message.contains("host port \(port) of machine bare is already in use"))
                let cause = try #require(error.cause as? MachineError)
                #expect(cause == .portInUse(port: port, standardError: cause.standardError))
                #expect(
                    cause.standardError.contains("Could not set up host forwarding rule 'tcp:127.0.0.1:\(port)-:80'"))
            }
        }
    }

    @Test("a NIMBUS_HOME deeper than the 108-byte socket path limit still starts and is controlled over QMP")
    func longSocketPath() async throws {
        let deep = String(repeating: "very-long-folder-name-", count: 6)
        try await MachineFixture.with(label: "nimbus-\(deep)") { fixture in
            #expect(fixture.directory.qmpSocket.path.utf8.count > 108)
            let machine = try await fixture.driver.start(MachineFixture.bareConfig(), in: fixture.directory)
            #expect(await fixture.driver.status(of: fixture.directory).state == .running)
            let client = try await QEMUDriver.connect(fixture.directory)
            #expect(try await client.queryStatus().running)
            await client.close()
            try await fixture.driver.kill(fixture.directory)
            #expect(QEMUProcess(pid: machine.pid).isAlive == false)
        }
    }

    @Test("a pidfile naming a process that is not this machine's QEMU reads as stopped")
    func stalePidfile() async throws {
        try await MachineFixture.with { fixture in
            try FileManager.default.createDirectory(at: fixture.directory.url, withIntermediateDirectories: true)
            try "\(getpid())\n".write(to: fixture.directory.pidFile, atomically: true, encoding: .utf8)
            #expect(await fixture.driver.status(of: fixture.directory).state == .stopped)
            let outcome = try await fixture.driver.stop(fixture.directory, timeout: .seconds(1), progress: nil)
            #expect(outcome.endedBy == .alreadyStopped)
        }
    }

    @Test("UEFI: the machine gets its own qcow2 variable store, and live snapshots work with it")
    func uefiAndSnapshots() async throws {
        try await MachineFixture.with { fixture in
            var config = MachineFixture.bareConfig()
            config.firmware = .uefi()
            _ = try await fixture.driver.start(config, in: fixture.directory)
            #expect(FileManager.default.fileExists(atPath: fixture.directory.firmwareVariables.path))
            try await fixture.driver.saveSnapshot("before", in: fixture.directory)
            try await fixture.driver.loadSnapshot("before", in: fixture.directory)
            try await fixture.driver.deleteSnapshot("before", in: fixture.directory)
            do {
                try await fixture.driver.loadSnapshot("missing", in: fixture.directory)
                Issue.record("loaded a missing snapshot")
            } catch let error as NimbusError {
                #expect(error.message.contains("missing"))
            }
            try await fixture.driver.kill(fixture.directory)
        }
    }

    @Test("the serial log of the previous boot is kept as serial.log.1")
    func serialRotation() async throws {
        try await MachineFixture.with { fixture in
            try FileManager.default.createDirectory(at: fixture.directory.url, withIntermediateDirectories: true)
            try "previous boot\n".write(to: fixture.directory.serialLog, atomically: true, encoding: .utf8)
            _ = try await fixture.driver.start(MachineFixture.bareConfig(), in: fixture.directory)
            #expect(try String(contentsOf: fixture.directory.previousSerialLog, encoding: .utf8) == "previous boot\n")
            #expect(FileManager.default.fileExists(atPath: fixture.directory.serialLog.path))
            try await fixture.driver.kill(fixture.directory)
            let big = fixture.directory.url.appending(path: "big.log")
            try Data(repeating: UInt8(ascii: "x"), count: 3000).write(to: big)
            SerialLog.trim(big, limit: ByteSize(bytes: 1000))
            #expect(try Data(contentsOf: big).count == 1000)
        }
    }

    @Test("when the monitor is held by another client, stop falls back to SIGTERM")
    func stopBySIGTERM() async throws {
        try await MachineFixture.with { fixture in
            _ = try await fixture.driver.start(MachineFixture.bareConfig(), in: fixture.directory)
            let holder = try await QEMUDriver.connect(fixture.directory)
            let outcome = try await fixture.driver.stop(fixture.directory, timeout: .seconds(1), progress: nil)
            #expect(outcome.endedBy == .terminate)
            #expect(outcome.steps.contains { $0.contains("SIGTERM") })
            await holder.close()
        }
    }

    @Test("a frozen QEMU (SIGSTOP) ends by SIGKILL, the last rung")
    func stopBySIGKILL() async throws {
        try await MachineFixture.with { fixture in
            let machine = try await fixture.driver.start(MachineFixture.bareConfig(), in: fixture.directory)
            Glibc.kill(machine.pid, SIGSTOP)
            let outcome = try await fixture.driver.stop(fixture.directory, timeout: .seconds(1), progress: nil)
            #expect(outcome.endedBy == .kill)
            #expect(
                outcome.steps.suffix(2).map { $0.components(separatedBy: " to ").first } == [
                    "sending SIGTERM", "sending SIGKILL",
                ])
            #expect(QEMUProcess(pid: machine.pid).isAlive == false)
        }
    }

    @Test("microvm on TCG is refused before QEMU runs, naming the way out")
    func microvmNeedsKVM() async throws {
        try await MachineFixture.with { fixture in
            var config = MachineFixture.bareConfig()
            config.machineType = .microvm
            config.kernel = .init(kernel: "/boot/vmlinuz")
            config.accelerator = .tcg
            do {
                _ = try await fixture.driver.start(config, in: fixture.directory)
                Issue.record("microvm started on TCG")
            } catch let error as NimbusError {
                #expect(error.code == .unsupported)
                #expect(error.message.contains("use the q35 machine type"))
            }
            #expect(!FileManager.default.fileExists(atPath: fixture.directory.pidFile.path))
        }
    }

    @Test("status reports a live machine whose monitor is held by another client as unresponsive, with its pid")
    func unresponsiveStatus() async throws {
        try await MachineFixture.with { fixture in
            let machine = try await fixture.driver.start(MachineFixture.bareConfig(), in: fixture.directory)
            let holder = try await QEMUDriver.connect(fixture.directory)
            let status = await fixture.driver.status(of: fixture.directory)
            #expect(status.state == .unresponsive)
            #expect(status.pid == machine.pid)
            await holder.close()
            #expect(await fixture.driver.status(of: fixture.directory).state == .running)
            try await fixture.driver.kill(fixture.directory)
        }
    }
}
