import Foundation
import NimbusCore
import NimbusTestSupport
import Testing

@testable import NimbusLibvirt
@testable import NimbusMachines

/// The libvirt driver against the host's real libvirtd (started by the tests when it is not running) and
/// real QEMU under TCG. The lifecycle test boots no OS: a BIOS machine without disks sits in SeaBIOS,
/// which is enough to drive start, status, suspend, resume and the stop ladder through libvirt.
@Suite("Libvirt driver", .serialized)
struct LibvirtDriverTests {
    @Test("a URI that does not parse is refused before any connection, naming the URI and the forms to use")
    func badURI() async throws {
        for uri in ["not a uri", "qemu:/system", "::", "qemu+://host/system"] {
            let driver = LibvirtDriver(uri: uri, hostFactsCache: nil)
            try await TemporaryDirectory.with { home in
                let error = await #expect(throws: NimbusError.self) {
                    try await driver.start(Self.firmwareOnly("bad-uri"), in: MachineDirectory(home.url))
                }
                #expect(error?.code == .invalidArgument)
                #expect(error?.message.contains("\"\(uri)\"") == true, "\(error?.message ?? "")")
                #expect(error?.message.contains("qemu:///system") == true)
            }
        }
    }

    @Test(
        "a URI with a driver libvirt does not have is an invalid argument from libvirt itself",
        .requires(.libvirt))
    func unknownDriver() async throws {
        // The client hands an unknown scheme to the daemon, which is what answers "no connection driver".
        let lease = try await LibvirtDaemon.lease()
        defer { lease.release() }
        let error = #expect(throws: NimbusError.self) { try LibvirtConnection(uri: "nosuchdriver:///system") }
        #expect(error?.code == .invalidArgument, "\(error?.message ?? "")")
        #expect(error?.message.contains("nosuchdriver:///system") == true)
    }

    @Test("libvirtd not running: the message says how to start it")
    func daemonNotRunning() async throws {
        try await TemporaryDirectory.with { home in
            // A socket path nothing listens on is exactly what a stopped libvirtd leaves.
            let uri = "qemu:///system?socket=\(home.url.path)/libvirt-sock"
            let error = #expect(throws: NimbusError.self) { try LibvirtConnection(uri: uri) }
            #expect(error?.code == .unsupported)
            #expect(error?.message.contains("libvirtd is not running") == true, "\(error?.message ?? "")")
            #expect(error?.message.contains("libvirtd -d") == true)
            #expect(error?.message.contains("systemctl start libvirtd") == true)
        }
    }

    /// A machine that needs no disk or image: BIOS, no network, nothing to boot.
    static func firmwareOnly(_ name: String) -> MachineConfig {
        var config = MachineConfig(name: name)
        config.cpus = 1
        config.memory = .mebibytes(128)
        config.firmware = .bios
        config.network.mode = .none
        config.accelerator = .tcg
        return config
    }

    static func domainExists(_ name: String) async throws -> Bool {
        try await ProgramRunner.output("virsh", ["-c", "qemu:///system", "domstate", name]).status == 0
    }

    /// `virsh domstate`'s words for the domain, nil when there is no such domain.
    static func domainState(_ name: String) async throws -> String? {
        let result = try await ProgramRunner.output("virsh", ["-c", "qemu:///system", "domstate", name])
        return result.status == 0 ? result.standardOutput.trimmingCharacters(in: .whitespacesAndNewlines) : nil
    }

    @Test(
        "define and start, status, suspend, resume, the stop ladder, start again, forget undefines with the NVRAM",
        .requires(.libvirt))
    func lifecycle() async throws {
        let lease = try await LibvirtDaemon.lease()
        defer { lease.release() }
        try await TemporaryDirectory.with("nimbus-libvirt") { home in
            let directory = MachineDirectory(home.url.appending(path: "machine"))
            var config = Self.firmwareOnly("lt-\(UUID().uuidString.prefix(6).lowercased())")
            config.firmware = .uefi()
            config.annotations = ["spec": "name: <web> & \"x\"\n", "state": "{}"]
            let domain = LibvirtDomainXML.domainName(for: config.name)
            let driver = LibvirtDriver(hostFactsCache: nil)
            defer { _ = try? ProgramRunnerSync.remove(domain) }

            let running = try await driver.start(config, in: directory)
            #expect(running.accelerator.accelerator == .tcg)
            #expect(running.pid > 0)
            #expect(await driver.status(of: directory).state == .running)
            #expect(try await Self.domainState(domain) == "running")
            let persistent = try await LibvirtDaemon.virsh(["dominfo", domain]).standardOutput
            #expect(persistent.contains(#/Persistent:\s+yes/#), "\(persistent)")
            let second = await #expect(throws: NimbusError.self) { try await driver.start(config, in: directory) }
            #expect(second?.code == .invalidState)

            // The metadata carries the annotations, byte for byte, and the instance's folder.
            let found = try LibvirtDriver.nimbusDomains(uri: LibvirtDriver.defaultURI).first { $0.domain == domain }
            #expect(found?.metadata.annotations == config.annotations)
            #expect(found?.metadata.folder == directory.url.path)
            #expect(found?.state == .running)
            // The owner refreshes them later, in the live and the persistent definition.
            let refreshed = ["state": "{\"accelerator\": \"tcg\"}"]
            try driver.annotate(directory, refreshed)
            let updated = try LibvirtDriver.nimbusDomains(uri: LibvirtDriver.defaultURI).first { $0.domain == domain }
            #expect(updated?.metadata.annotations == refreshed)
            #expect(updated?.metadata.folder == directory.url.path)
            let inactive = try await LibvirtDaemon.virsh(["dumpxml", "--inactive", domain]).standardOutput
            #expect(inactive.contains(Data(refreshed["state", default: ""].utf8).base64EncodedString()))

            try await driver.suspend(directory)
            #expect(await driver.status(of: directory).state == .paused)
            try await driver.resume(directory)
            #expect(await driver.status(of: directory).state == .running)

            // OVMF with nothing to boot ignores the power button: the ladder goes on to destroy.
            let outcome = try await driver.stop(directory, timeout: .seconds(2), progress: nil)
            #expect(outcome.endedBy == .terminate || outcome.endedBy == .kill, "\(outcome.steps)")
            #expect(outcome.steps.first?.contains("ACPI power button") == true)
            // Stopped is a shut-off, still defined domain.
            #expect(await driver.status(of: directory).state == .stopped)
            #expect(try await Self.domainState(domain) == "shut off")

            let again = try await driver.stop(directory, timeout: .seconds(2), progress: nil)
            #expect(again.endedBy == .alreadyStopped)
            let notRunning = await #expect(throws: NimbusError.self) { try await driver.suspend(directory) }
            #expect(notRunning?.code == .invalidState)

            // Start again defines the same domain (same UUID) from the config, which may have changed.
            let uuid = try await LibvirtDaemon.virsh(["domuuid", domain]).standardOutput
            config.memory = .mebibytes(160)
            _ = try await driver.start(config, in: directory)
            #expect(await driver.status(of: directory).state == .running)
            #expect(try await LibvirtDaemon.virsh(["domuuid", domain]).standardOutput == uuid)
            #expect(try await LibvirtDaemon.virsh(["dominfo", domain]).standardOutput.contains("163840 KiB"))

            // forget destroys and undefines, taking the NVRAM with it.
            let nvram = directory.url.appending(path: LibvirtDomainXML.nvramName)
            #expect(FileManager.default.fileExists(atPath: nvram.path))
            try await driver.forget(directory)
            #expect(try await Self.domainExists(domain) == false)
            #expect(!FileManager.default.fileExists(atPath: nvram.path))
            #expect(await driver.status(of: directory).state == .stopped)
            try await driver.forget(directory)
        }
    }

    @Test(
        "a domain name taken by a domain Nimbus did not create is refused and left untouched",
        .requires(.libvirt))
    func foreignDomain() async throws {
        let lease = try await LibvirtDaemon.lease()
        defer { lease.release() }
        try await TemporaryDirectory.with("nimbus-libvirt") { home in
            let config = Self.firmwareOnly("foreign-\(UUID().uuidString.prefix(6).lowercased())")
            let domain = LibvirtDomainXML.domainName(for: config.name)
            let file = home.url.appending(path: "foreign.xml")
            try """
            <domain type='qemu'><name>\(domain)</name><memory unit='MiB'>64</memory>
            <os><type arch='x86_64' machine='q35'>hvm</type></os></domain>
            """.write(to: file, atomically: true, encoding: .utf8)
            try await ProgramRunner.run("virsh", ["-c", "qemu:///system", "define", file.path])
            defer { _ = try? ProgramRunnerSync.undefine(domain) }

            let directory = MachineDirectory(home.url.appending(path: "machine"))
            let driver = LibvirtDriver(hostFactsCache: nil)
            let error = await #expect(throws: NimbusError.self) { try await driver.start(config, in: directory) }
            #expect(error?.code == .alreadyExists)
            #expect(error?.message.contains("was not created by Nimbus") == true, "\(error?.message ?? "")")
            #expect(error?.message.contains(domain) == true)
            // Still there, still defined, still off.
            let state = try await ProgramRunner.run("virsh", ["-c", "qemu:///system", "domstate", domain])
            #expect(state.contains("shut off"))
        }
    }

    @Test(
        "libvirtd and then virtlogd restarted while a machine runs: status says libvirtd does not answer, then finds the machine again; the machine outlives virtlogd",
        .requires(.libvirt), arguments: [true, false])
    func daemonRestart(uefi: Bool) async throws {
        let lease = try await LibvirtDaemon.lease(exclusive: true)
        defer { lease.release() }
        try await TemporaryDirectory.with("nimbus-libvirt") { home in
            let directory = MachineDirectory(home.url.appending(path: "machine"))
            var config = Self.firmwareOnly("rs-\(UUID().uuidString.prefix(6).lowercased())")
            // A UEFI domain has more for libvirt to check when it reconnects (the loader, its NVRAM).
            if uefi { config.firmware = .uefi() }
            let domain = LibvirtDomainXML.domainName(for: config.name)
            let driver = LibvirtDriver(hostFactsCache: nil)
            defer { _ = try? ProgramRunnerSync.remove(domain) }
            let running = try await driver.start(config, in: directory)

            try await LibvirtDaemon.stop()
            let down = await driver.status(of: directory)
            #expect(down.state == .unresponsive)
            #expect(down.detail?.contains("libvirtd is not running") == true, "\(down.detail ?? "")")
            // QEMU does not depend on libvirtd: the guest runs on.
            #expect(kill(running.pid, 0) == 0)

            try await LibvirtDaemon.ensureRunning()
            #expect(await driver.status(of: directory).state == .running)

            // virtlogd restarted too (not re-executed): QEMU keeps running, libvirtd keeps it, and its console
            // log is no longer written until that QEMU ends (Readiness then goes by SSH: ReadinessTests).
            try await LibvirtDaemon.restartVirtlogd()
            #expect(kill(running.pid, 0) == 0)
            #expect(await driver.status(of: directory).state == .running)
            let outcome = try await driver.stop(directory, timeout: .seconds(1), progress: nil)
            #expect(outcome.endedBy != .alreadyStopped)
            try await driver.forget(directory)
            #expect(try await Self.domainExists(domain) == false)
        }
    }

    @Test(
        "a live snapshot of a UEFI machine is refused with the ways that work",
        .requires(.libvirt))
    func uefiSnapshot() async throws {
        let lease = try await LibvirtDaemon.lease()
        defer { lease.release() }
        try await TemporaryDirectory.with("nimbus-libvirt") { home in
            let directory = MachineDirectory(home.url.appending(path: "machine"))
            var config = Self.firmwareOnly("sn-\(UUID().uuidString.prefix(6).lowercased())")
            config.firmware = .uefi()
            let domain = LibvirtDomainXML.domainName(for: config.name)
            let driver = LibvirtDriver(hostFactsCache: nil)
            defer { _ = try? ProgramRunnerSync.remove(domain) }
            _ = try await driver.start(config, in: directory)
            // libvirt made the machine's own variable store from the OVMF template.
            #expect(
                FileManager.default.fileExists(atPath: directory.url.appending(path: LibvirtDomainXML.nvramName).path))
            let error = await #expect(throws: NimbusError.self) {
                try await driver.saveSnapshot("before", in: directory)
            }
            #expect(error?.code == .unsupported)
            #expect(error?.message.contains("--driver qemu") == true, "\(error?.message ?? "")")
            try await driver.kill(directory)
            #expect(try await Self.domainState(domain) == "shut off")
            try await driver.forget(directory)
            #expect(try await Self.domainExists(domain) == false)
        }
    }
}

extension LibvirtDriverTests {
    @Test(
        "the serial console through virDomainOpenConsole: keys reach the UEFI shell and its answer comes back",
        .requires(.libvirt))
    func console() async throws {
        let lease = try await LibvirtDaemon.lease()
        defer { lease.release() }
        try await TemporaryDirectory.with("nimbus-libvirt") { home in
            let directory = MachineDirectory(home.url.appending(path: "machine"))
            var config = Self.firmwareOnly("cn-\(UUID().uuidString.prefix(6).lowercased())")
            config.firmware = .uefi()
            let domain = LibvirtDomainXML.domainName(for: config.name)
            let driver = LibvirtDriver(hostFactsCache: nil)
            defer { _ = try? ProgramRunnerSync.remove(domain) }
            let stopped = await #expect(throws: NimbusError.self) { try await driver.openConsole(directory) }
            #expect(stopped?.code == .invalidState)

            _ = try await driver.start(config, in: directory)
            let console = try await driver.openConsole(directory)
            // OVMF with nothing to boot ends in its shell on the serial port; keep typing `ver` until it answers.
            let received = await withCheckedContinuation { (continuation: CheckedContinuation<String, Never>) in
                Thread.detachNewThread {
                    var seen = ""
                    var buffer = [UInt8](repeating: 0, count: 4096)
                    while !seen.contains("UEFI Interactive Shell") && !seen.contains("EDK II") {
                        let count = buffer.withUnsafeMutableBytes { console.receive($0) }
                        if count == 0 { break }
                        seen += String(decoding: buffer[..<count], as: UTF8.self)
                    }
                    continuation.resume(returning: seen)
                }
                Thread.detachNewThread {
                    for _ in 0..<600 {
                        // A closed stream (the answer came) refuses the keys: stop typing.
                        guard Array("\rver\r".utf8).withUnsafeBytes({ console.send($0) }) else { return }
                        Thread.sleep(forTimeInterval: 1)
                    }
                    // Nothing came in ten minutes: end the stream, which ends the receiving thread.
                    console.close()
                }
            }
            #expect(
                received.contains("UEFI Interactive Shell") || received.contains("EDK II"), "\(received.suffix(500))")
            console.close()
            try await driver.forget(directory)
        }
    }
}

/// Clean-up from `defer`, which cannot await: virsh run synchronously with Foundation's Process.
enum ProgramRunnerSync {
    static func virsh(_ arguments: [String]) throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/virsh")
        process.arguments = ["-c", "qemu:///system"] + arguments
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        process.waitUntilExit()
    }

    static func destroy(_ domain: String) throws { try virsh(["destroy", domain]) }
    /// Destroys and undefines a domain a test made (persistent since the driver defines its domains).
    static func remove(_ domain: String) throws {
        try virsh(["destroy", domain])
        try virsh(["undefine", "--nvram", "--snapshots-metadata", "--managed-save", domain])
    }
    static func undefine(_ domain: String) throws { try virsh(["undefine", domain]) }
}
