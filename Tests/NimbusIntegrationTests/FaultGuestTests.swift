import Foundation
import NimbusCore
import NimbusInstances
import NimbusMachines
import NimbusTestSupport
import Testing

@testable import NimbusQEMU

/// Faults a user meets, injected into the real Debian cloud guest under QEMU, through the `nimbus` binary as
/// users run it (issue 19). The same guest carries a data volume through them (issue 17: made at launch, one
/// holder at a time, grown while stopped, kept by `delete --purge` for the next instance, which fetches its
/// seed over HTTP): one boot serves both.
@Suite("Faults with guests", .serialized, .requires(.guest))
struct FaultGuestTests {
    @Test(
        "a host reboot right after launch with state.json, known_hosts and the image record damaged: doctor --fix repairs them and start brings it all back (what cloud-init wrote was synced); with the host keys lost, start fails at once naming the SSH server, and recover --reseed brings back the same key; its data volume is refused to a second holder, grows while stopped, outlives it and is mounted by the next instance, whose seed comes over HTTP"
    )
    func killedAfterLaunch() async throws {
        let slot = try await GuestSlot(expectedSeconds: 1100)
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
        // And a file cloud-init writes on the data volume at first boot, read back after the host reboot.
        try Data(
            "#cloud-config\nbootcmd:\n  - echo \(secret) > /run/audit-token\nruncmd:\n  - [sh, -c, \"echo pre > /srv/pre.txt\"]\n"
                .utf8
        ).write(to: userData)
        var foreign: Process?
        do {
            let created = try await nimbus(["network", "create", network, "--subnet", subnet])
            #expect(created.status == 0, "\(created.standardError)")
            let launched = try await nimbus([
                "launch", image, "--name", "k", "--memory", "1G", "--timeout", "900", "--mount",
                "\(share.path):/mnt/share", "--network", network, "--cloud-init", userData.path, "--volume",
                "data:/srv:1G",
            ])
            #expect(launched.status == 0, "\(launched.standardError)")
            let key = try await nimbus(["exec", "k", "--", "sh", "-c", hostKey]).standardOutput
            #expect(key.hasPrefix("ssh-ed25519 "), "\(key)")

            // A host reboot right after the launch, simulated: every process of the instance and of its network
            // gone at once (QEMU, before ext4 would have written cloud-init's files back by itself; virtiofsd,
            // dnsmasq, the SSH connection kept open), the bridge gone, and the pid in qemu.pid and
            // virtiofsd0.pid now another program's.
            let bridge = try JSONDecoder().decode(
                NetworkInfo.self,
                from: Data(try await nimbus(["network", "info", network, "--format", "json"]).standardOutput.utf8)
            ).bridge
            foreign = try Self.rebootHost(instance: home.paths.instances.appending(path: "k"), home: home)
            _ = try await ProgramRunner.output("ip", ["link", "del", bridge])
            let listed = try await nimbus(["list"])
            #expect(listed.standardOutput.contains("stopped"), "\(listed.standardOutput)")
            // The volume grows while its instance is stopped; the filesystem follows at the next start.
            let resized = try await nimbus(["volume", "resize", "data", "--size", "2G"])
            #expect(resized.status == 0, "\(resized.standardError)")

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

            // start brings back the network, the share, and SSH with the pinned key (what cloud-init wrote
            // before the power loss was synced).
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
            #expect(try await nimbus(["exec", "k", "--", "cat", "/srv/pre.txt"]).standardOutput == "pre\n")
            let size = try await nimbus(["exec", "k", "--", "df", "-B1M", "--output=size", "/srv"])
            let megabytes = Int(
                size.standardOutput.split(separator: "\n").last?.trimmingCharacters(in: .whitespaces) ?? "")
            #expect((megabytes ?? 0) > 1800, "\(size.standardOutput)\(size.standardError)")

            try await volumeHeld(nimbus: nimbus, image: image)

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

            try await volumeOutlivesInstance(nimbus: nimbus, image: image, home: home)
        } catch {
            Issue.record(error)
        }
        // SIGKILL: the test process ignores SIGTERM, and the program it started inherited that.
        if let foreign {
            kill(foreign.processIdentifier, SIGKILL)
            foreign.waitUntilExit()
        }
        _ = try? await nimbus(["delete", "--purge", "--all"])
        _ = try? await nimbus(["network", "delete", network])
        home.remove()
    }

    /// k holds the volume `data`, made at launch: the guest formatted it; a second holder, its deletion and
    /// its growth while k runs are refused, before anything is made.
    func volumeHeld(nimbus: (_ arguments: [String]) async throws -> ProgramOutput, image: String) async throws {
        let wrote = try await nimbus([
            "exec", "k", "--", "sh", "-c",
            "echo kept | sudo tee /srv/kept.txt >/dev/null && sudo touch /etc/lost.txt && findmnt -n -o FSTYPE,LABEL /srv",
        ])
        #expect(wrote.standardOutput.contains("ext4"), "\(wrote.standardOutput)\(wrote.standardError)")
        #expect(wrote.standardOutput.contains("nv-data"), "\(wrote.standardOutput)")
        let second = try await nimbus(["launch", image, "--name", "vb", "--volume", "data:/data"])
        #expect(second.status == NimbusError.Code.alreadyExists.exitStatus, "\(second.standardError)")
        #expect(second.standardError.contains("attached to k"), "\(second.standardError)")
        #expect(!(try await nimbus(["list", "--format", "json"])).standardOutput.contains("\"vb\""))
        let held = try await nimbus(["volume", "delete", "data"])
        #expect(held.status == NimbusError.Code.invalidState.exitStatus, "\(held.standardError)")
        #expect(held.standardError.contains("attached to k"), "\(held.standardError)")
        let running = try await nimbus(["volume", "resize", "data", "--size", "3G"])
        #expect(running.status == NimbusError.Code.invalidState.exitStatus, "\(running.standardError)")
        #expect(running.standardError.contains("stop k"), "\(running.standardError)")
    }

    /// `delete --purge k` gives the volume back with its data; the next instance mounts it on a fresh root.
    /// That instance fetches its seed over HTTP (`--seed-over-http`): no seed disk, the URL in the SMBIOS
    /// serial, cloud-init's NoCloud datasource over the network. The volume is deleted once free.
    func volumeOutlivesInstance(
        nimbus: (_ arguments: [String]) async throws -> ProgramOutput, image: String, home: TemporaryDirectory
    ) async throws {
        let purge = try await nimbus(["delete", "--purge", "k"])
        #expect(purge.status == 0 && purge.standardError.contains("volume data remains"), "\(purge.standardError)")
        let free = try await nimbus(["volume", "info", "data", "--format", "json"])
        #expect(free.status == 0 && !free.standardOutput.contains("attachedTo"), "\(free.standardOutput)")

        let next = try await nimbus([
            "launch", image, "--name", "vb", "--memory", "1G", "--volume", "data:/data", "--seed-over-http",
            "--hostname", "fetched-over-http", "--timeout", "900",
        ])
        #expect(next.status == 0, "\(next.standardError)")
        #expect(next.standardError.contains("seed fetched over HTTP"), "\(next.standardError)")
        let read = try await nimbus(["exec", "vb", "--", "cat", "/data/kept.txt"])
        #expect(read.standardOutput == "kept\n", "\(read.standardOutput)\(read.standardError)")
        // A fresh root: what the first instance wrote under /etc is not there.
        #expect(try await nimbus(["exec", "vb", "--", "test", "-e", "/etc/lost.txt"]).status == 1)

        // No seed disk: no seed.iso written, none on QEMU's command line; the seed is in the SMBIOS serial.
        let folder = home.paths.instances.appending(path: "vb")
        #expect(!FileManager.default.fileExists(atPath: folder.appending(path: "seed.iso").path))
        #expect(FileManager.default.fileExists(atPath: folder.appending(path: "seed/user-data").path))
        let arguments = try #require(QEMUProcess.find(in: MachineDirectory(folder))?.commandLine, "no QEMU for vb")
        let seedDisk = ["seed.iso", "id=seed", "media=cdrom", "ide-cd"]
        #expect(!arguments.contains { argument in seedDisk.contains { argument.contains($0) } }, "\(arguments)")
        let smbios = try #require(arguments.firstIndex(of: "-smbios").map { arguments[$0 + 1] })
        #expect(smbios.hasPrefix("type=1,serial=ds=nocloud-net;s=http://10.0.2.2:"), "\(smbios)")
        #expect(smbios.hasSuffix("/"))
        // Inside the guest: the datasource is NoCloud over the network, from that URL, and it applied the seed.
        let hostname = try await nimbus(["exec", "vb", "--", "hostname"])
        #expect(hostname.standardOutput == "fetched-over-http\n", "\(hostname.standardError)")
        let status = try await nimbus(["exec", "vb", "--", "cloud-init", "status", "--long"]).standardOutput
        #expect(status.contains("status: done"), "\(status)")
        #expect(status.contains("DataSourceNoCloudNet"), "\(status)")
        #expect(status.contains("http://10.0.2.2:"), "\(status)")

        #expect(try await nimbus(["delete", "--purge", "vb"]).status == 0)
        #expect(try await nimbus(["volume", "delete", "data"]).status == 0)
        let none = try await nimbus(["volume", "list", "--format", "json"])
        #expect(none.status == 0 && !none.standardOutput.contains("data"), "\(none.standardOutput)")
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
