import Foundation
import NimbusCore
import NimbusInstances
import NimbusTestSupport
import Testing

/// Faults a user meets, injected into the real Debian cloud guest under QEMU, through the `nimbus` binary as
/// users run it (issue 19).
@Suite("Faults with guests", .serialized, .requires(.guest))
struct FaultGuestTests {
    @Test(
        "QEMU killed right after launch: start works (what cloud-init wrote was synced); with the host keys lost, start fails at once naming the SSH server, and recover --reseed brings back the same key; a host reboot with state.json, known_hosts and the image record damaged: doctor --fix repairs them and start brings it all back"
    )
    func killedAfterLaunch() async throws {
        let slot = try await GuestSlot(expectedSeconds: 350)
        defer { withExtendedLifetime(slot) {} }
        let home = try TemporaryDirectory.guestHome("nimbus-faults")
        let image = "file://" + (Prerequisites.guestImage?.path ?? "/missing-guest-image")
        func nimbus(_ arguments: [String]) async throws -> ProgramOutput {
            let result = try await NimbusBinary.run(arguments, home: home.url)
            print("    nimbus \(arguments.joined(separator: " ")) -> \(result.status)")
            return result
        }
        func killQEMU() throws {
            let pidFile = home.paths.instances.appending(path: "k/qemu.pid")
            let pid = try #require(PIDFile(pidFile.path).livePID, "no live QEMU in \(pidFile.path)")
            kill(pid, SIGKILL)
        }
        let hostKey = "sudo cat /etc/ssh/ssh_host_ed25519_key.pub"
        // A folder shared over virtiofs and a host network (bridge and dnsmasq): what a host reboot takes away.
        let share = home.url.appending(path: "share")
        try FileManager.default.createDirectory(at: share, withIntermediateDirectories: true)
        try Data("shared\n".utf8).write(to: share.appending(path: "file"))
        let network = "f" + String(UUID().uuidString.prefix(4)).lowercased()
        let subnet = "10.\(UInt8.random(in: 200...250)).\(UInt8.random(in: 0...250)).0/24"
        // A secret in the user-data, as users put passwords and tokens there: the audit looks for it.
        let secret = "nimbus-audit-\(UUID().uuidString)"
        let userData = home.url.appending(path: "user-data")
        try Data("#cloud-config\nbootcmd:\n  - echo \(secret) > /run/audit-token\n".utf8).write(to: userData)
        var foreign: Process?
        do {
            let created = try await nimbus(["network", "create", network, "--subnet", subnet])
            #expect(created.status == 0, "\(created.standardError)")
            let launched = try await nimbus([
                "launch", image, "--name", "k", "--memory", "1G", "--timeout", "900", "--mount",
                "\(share.path):/mnt/share", "--network", network, "--cloud-init", userData.path,
            ])
            #expect(launched.status == 0, "\(launched.standardError)")
            let key = try await nimbus(["exec", "k", "--", "sh", "-c", hostKey]).standardOutput
            #expect(key.hasPrefix("ssh-ed25519 "), "\(key)")

            // Killed at once, before ext4 would have written cloud-init's files back by itself.
            try killQEMU()
            let restarted = try await nimbus(["start", "k", "--timeout", "900"])
            #expect(restarted.status == 0, "\(restarted.standardError)")
            #expect(try await nimbus(["exec", "k", "--", "sh", "-c", hostKey]).standardOutput == key)

            // The keys lost as an unclean stop loses them (empty files), then QEMU killed: start names the SSH
            // server and the repair, well before its timeout.
            let emptied = try await nimbus([
                "exec", "k", "--", "sudo", "sh", "-c", "truncate -s 0 /etc/ssh/ssh_host_*_key && sync",
            ])
            #expect(emptied.status == 0, "\(emptied.standardError)")
            try killQEMU()
            let failed = try await nimbus(["start", "k", "--timeout", "900"])
            #expect(failed.status == NimbusError.Code.guestSetup.exitStatus, "\(failed.standardError)")
            #expect(
                failed.standardError.contains("the guest's SSH server does not start")
                    && failed.standardError.contains("nimbus recover --reseed"), "\(failed.standardError)")

            let reseeded = try await nimbus(["recover", "--reseed", "k"])
            #expect(reseeded.status == 0, "\(reseeded.standardError)")
            #expect(try await nimbus(["exec", "k", "--", "sh", "-c", hostKey]).standardOutput == key)

            // A host reboot, simulated: every process of the instance and of its network gone at once (QEMU,
            // virtiofsd, dnsmasq, the SSH connection kept open), the bridge gone, and the pid in qemu.pid and
            // virtiofsd0.pid now another program's.
            let bridge = try JSONDecoder().decode(
                NetworkInfo.self,
                from: Data(try await nimbus(["network", "info", network, "--format", "json"]).standardOutput.utf8)
            ).bridge
            foreign = try Self.rebootHost(instance: home.paths.instances.appending(path: "k"), home: home)
            _ = try await ProgramRunner.output("ip", ["link", "del", bridge])
            let listed = try await nimbus(["list"])
            #expect(listed.standardOutput.contains("stopped"), "\(listed.standardOutput)")

            // What a crash can leave damaged: state.json cut short, known_hosts emptied, the image's record
            // cut. The instance shows as error; doctor names each file, and --fix makes them again.
            let folder = home.paths.instances.appending(path: "k")
            try Self.truncate(folder.appending(path: "state.json"))
            try Data().write(to: folder.appending(path: "known_hosts"))
            let records = try FileManager.default.contentsOfDirectory(atPath: home.paths.images.path)
                .filter { $0.hasSuffix(".json") }
            #expect(records.count == 1, "\(records)")
            for record in records { try Self.truncate(home.paths.images.appending(path: record)) }
            #expect(try await nimbus(["list"]).standardOutput.contains("error"))
            let doctor = try await nimbus(["doctor"])
            #expect(doctor.status == 5, "\(doctor.standardOutput)")
            for damaged in ["state.json is damaged", "known_hosts does not pin", "/\(records.first ?? "?") is damaged"]
            {
                #expect(doctor.standardOutput.contains(damaged), "\(damaged): \(doctor.standardOutput)")
            }
            let fixed = try await nimbus(["doctor", "--fix"])
            #expect(fixed.status == 0, "\(fixed.standardOutput)\n\(fixed.standardError)")
            #expect(
                fixed.standardOutput.split(separator: "\n").filter { $0.hasPrefix("fixed") }.count >= 3,
                "\(fixed.standardOutput)")

            // start brings back the network, the share and SSH with the pinned key.
            let started = try await nimbus(["start", "k", "--timeout", "900"])
            #expect(started.status == 0, "\(started.standardError)")
            #expect(try await nimbus(["exec", "k", "--", "sh", "-c", hostKey]).standardOutput == key)
            let shared = try await nimbus(["exec", "k", "--", "cat", "/mnt/share/file"])
            #expect(shared.standardOutput == "shared\n", "\(shared.standardError)")
            let info = try await nimbus(["network", "info", network, "--format", "json"])
            #expect(info.standardOutput.contains("\"state\" : \"active\""), "\(info.standardOutput)")
            let address = try await nimbus(["exec", "k", "--", "ip", "-4", "-o", "addr"])
            #expect(
                address.standardOutput.contains(subnet.replacingOccurrences(of: ".0/24", with: ".")),
                "\(address.standardOutput)")

            // What the instance exposes, audited (issue 19): doctor --security passes, and the secret is on no
            // process's command line and in no file of the folder that others could read.
            let audit = try await nimbus(["doctor", "--security"])
            #expect(audit.status == 0, "\(audit.standardOutput)")
            for line in [
                "ok   instance k: its owner's alone: k, instance.yaml, seed.iso, ssh_host_ed25519_key",
                "ok   instance k: no command line carries its user-data",
                "ok   instance k: its processes listen on the loopback address only",
                "ok   instance k: SSH pins its host key",
            ] {
                #expect(audit.standardOutput.contains(line), "\(line): \(audit.standardOutput)")
            }
            #expect(try await nimbus(["exec", "k", "--", "cat", "/run/audit-token"]).standardOutput == "\(secret)\n")
            #expect(Self.commandLinesContaining(secret).isEmpty)
            // A folder opened up by hand is named, and --fix closes it again.
            chmod(folder.path, 0o755)
            let opened = try await nimbus(["doctor", "--security", "--fix"])
            #expect(
                opened.standardOutput.contains("fixed instance k: \(folder.path) is mode 755"),
                "\(opened.standardOutput)")
            var mode = stat()
            stat(folder.path, &mode)
            #expect(mode.st_mode & 0o777 == 0o700)
        } catch {
            Issue.record(error)
        }
        // SIGKILL: the test process ignores SIGTERM, and the program it started inherited that.
        if let foreign {
            kill(foreign.processIdentifier, SIGKILL)
            foreign.waitUntilExit()
        }
        _ = try? await nimbus(["delete", "--purge", "k"])
        _ = try? await nimbus(["network", "delete", network])
        home.remove()
    }

    /// The pids of the processes whose command line holds `text`.
    static func commandLinesContaining(_ text: String) -> [Int32] {
        ((try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []).compactMap { entry in
            guard let pid = Int32(entry), let data = FileManager.default.contents(atPath: "/proc/\(entry)/cmdline")
            else { return nil }
            return String(decoding: data, as: UTF8.self).contains(text) ? pid : nil
        }
    }

    /// Cuts `file` to half its length.
    static func truncate(_ file: URL) throws {
        let data = try Data(contentsOf: file)
        try data.prefix(data.count / 2).write(to: file)
    }

    /// Kills, as a host's power loss would, every process of the instance in `folder`, of the test's networks
    /// and of its SSH connections, then starts an unrelated program and writes its pid where QEMU's and
    /// virtiofsd's were: after a reboot, a pidfile's pid is often some other live process. Returns that
    /// program, for the caller to end.
    static func rebootHost(instance folder: URL, home: TemporaryDirectory) throws -> Process {
        var gone: [Int32] = []
        for entry in (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? [] {
            guard let pid = Int32(entry), pid != getpid(),
                let data = FileManager.default.contents(atPath: "/proc/\(entry)/cmdline")
            else { continue }
            let line = String(decoding: data.map { $0 == 0 ? 0x20 : $0 }, as: UTF8.self)
            let environment = FileManager.default.contents(atPath: "/proc/\(entry)/environ").map {
                String(decoding: $0.map { $0 == 0 ? 0x20 : $0 }, as: UTF8.self)
            }
            if line.contains(folder.path) || line.contains(home.paths.networks.path)
                || line.contains(home.paths.data.appending(path: "ssh").path)
                || environment?.contains("NIMBUS_MACHINE_FOLDER=\(folder.path)") == true
            {
                kill(pid, SIGKILL)
                gone.append(pid)
            }
        }
        let deadline = Date().addingTimeInterval(10)
        while gone.contains(where: PIDFile.isAlive), Date() < deadline { usleep(20_000) }
        let sleeper = Process()
        sleeper.executableURL = URL(fileURLWithPath: "/bin/sleep")
        sleeper.arguments = ["600"]
        // Not the test's output: swift test waits for whoever holds it open.
        sleeper.standardInput = FileHandle.nullDevice
        sleeper.standardOutput = FileHandle.nullDevice
        sleeper.standardError = FileHandle.nullDevice
        try sleeper.run()
        for pidFile in ["qemu.pid", "virtiofsd0.pid"] {
            try Data("\(sleeper.processIdentifier)\n".utf8).write(to: folder.appending(path: pidFile))
        }
        return sleeper
    }
}
