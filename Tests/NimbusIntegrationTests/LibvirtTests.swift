import Foundation
import NimbusCore
import NimbusDrivers
import NimbusInstances
import NimbusLibvirt
import NimbusMachines
import NimbusTestSupport
import Testing

/// The instances issue's core path through libvirt: the real Debian guest launched on the local libvirtd
/// (qemu:///system, TCG), reached by exec, stopped, and purged without a domain left behind.
@Suite(
    "Instances through libvirt", .serialized,
    .requires(.guest, .libvirt, .programs("runuser")))
struct LibvirtTests {
    @Test(
        "launch through libvirtd, exec, a guest power-off leaves a stopped defined domain, start, lost folder recovered, exec, delete --purge undefines"
    )
    func lifecycle() async throws {
        let slot = try await GuestSlot(expectedSeconds: 350)
        defer { withExtendedLifetime(slot) {} }
        let lease = try await LibvirtDaemon.lease()
        defer { lease.release() }
        let home = try TemporaryDirectory.guestHome("nimbus-libvirt-e2e")
        let manager = InstanceManager(paths: home.paths, config: try NimbusConfig.load(paths: home.paths)) {
            print("    \($0)")
        }
        let name = try InstanceName("lv-\(UUID().uuidString.prefix(6).lowercased())")
        let domain = "nimbus-\(name)"
        defer {
            // Never leave a domain running or defined, whatever failed.
            for arguments in [["destroy", domain], ["undefine", "--nvram", "--snapshots-metadata", domain]] {
                let process = Process()
                process.executableURL = URL(fileURLWithPath: "/usr/bin/virsh")
                process.arguments = ["-c", "qemu:///system"] + arguments
                process.standardError = FileHandle.nullDevice
                process.standardOutput = FileHandle.nullDevice
                try? process.run()
                process.waitUntilExit()
            }
            home.remove()
        }

        var spec = InstanceSpec(name: name, image: "file://" + (Prerequisites.guestImage?.path ?? "/missing"))
        spec.memory = .mebibytes(1024)
        spec.driver = .libvirt(connect: nil, pool: nil)
        spec.accelerator = .tcg
        // A secret in the user-data, as users put passwords and tokens there: the audit looks for it.
        let secret = "nimbus-audit-\(UUID().uuidString)"
        spec.userData = "#cloud-config\nbootcmd:\n  - echo \(secret) > /run/audit-token\n"
        let info = try await manager.launch(spec, wait: true, timeout: .seconds(900))
        #expect(info.state == .running)
        #expect(info.driver == "libvirt")
        #expect(info.host == "local")
        #expect(try await LibvirtDaemon.virsh(["domstate", domain]).standardOutput.contains("running"))
        let metadata = try await LibvirtDaemon.virsh(
            ["metadata", domain, "--uri", LibvirtDomainXML.metadataNamespace])
        // virsh prints the element without its prefix.
        #expect(metadata.standardOutput.contains("<name>\(name)</name>"), "\(metadata)")

        let ssh = try await manager.sshAccess(name)
        let hostname = try await ssh.run(["hostname"])
        #expect(hostname.status == 0, "\(hostname.standardError)")
        #expect(hostname.standardOutput.trimmingCharacters(in: .whitespacesAndNewlines) == name.rawValue)

        // What the instance exposes, audited (issue 19): doctor --security passes; the secret reached the guest
        // and is on no process's command line (libvirtd's QEMU included) and not in the domain's XML.
        let audit = try await NimbusBinary.run(["doctor", "--security"], home: home.url)
        for line in [
            "ok   instance \(name): its owner's alone", "ok   instance \(name): no command line carries its user-data",
            "ok   instance \(name): its processes listen on the loopback address only",
            "ok   instance \(name): SSH pins its host key",
        ] {
            #expect(audit.standardOutput.contains(line), "\(line): \(audit.standardOutput)")
        }
        #expect(!audit.standardOutput.contains("FAIL"), "\(audit.standardOutput)")
        #expect(try await ssh.run(["cat", "/run/audit-token"]).standardOutput == "\(secret)\n")
        #expect(FaultGuestTests.commandLinesContaining(secret).isEmpty)
        let xml = try await LibvirtDaemon.virsh(["dumpxml", domain]).standardOutput
        #expect(xml.contains("<name>\(domain)</name>") && !xml.contains(secret), "\(xml)")

        // The guest powers itself off: the domain stays defined, shut off, and the instance is stopped.
        _ = try? await ssh.run(["sudo", "systemctl", "poweroff"])
        let deadline = ContinuousClock.now + .seconds(900)
        while await manager.list().first?.state != .stopped, ContinuousClock.now < deadline {
            try await Task.sleep(for: .seconds(2))
        }
        #expect(try await manager.info(name).state == .stopped)
        #expect(try await LibvirtDaemon.virsh(["domstate", domain]).standardOutput.contains("shut off"))
        let list = try await NimbusBinary.run(["list"], home: home.url)
        #expect(list.standardOutput.contains(#/stopped.*libvirt\s+local/#), "\(list.standardOutput)")

        // Start defines the domain again from the current config and boots the same disk.
        try await manager.start(name, wait: true, timeout: .seconds(900))
        #expect(try await manager.info(name).state == .running)

        // The store loses the instance's folder while the guest runs: list marks the domain, recover rebuilds
        // the folder from its metadata (spec, state, SSH port, pinned host key), and exec works again.
        try FileManager.default.removeItem(at: manager.store.directory(name).url)
        let missing = try await NimbusBinary.run(["list"], home: home.url)
        #expect(missing.standardOutput.contains(#/missing.*libvirt\s+local/#), "\(missing.standardOutput)")
        let recover = try await NimbusBinary.run(["recover", name.rawValue], home: home.url)
        #expect(recover.status == 0, "\(recover.standardError)")
        let exec = try await NimbusBinary.run(["exec", name.rawValue, "--", "hostname"], home: home.url)
        #expect(exec.status == 0, "\(exec.standardError)")
        #expect(exec.standardOutput == "\(name)\n")
        #expect(try await manager.info(name).state == .running)

        // instance.yaml damaged: the domain keeps a copy, which doctor --fix puts back.
        let specFile = manager.store.directory(name).spec
        try Data("name: \(name)\nimage: [".utf8).write(to: specFile)
        let fixed = try await NimbusBinary.run(["doctor", "--fix"], home: home.url)
        #expect(
            fixed.standardOutput.contains("fixed instance \(name): instance.yaml is damaged"),
            "\(fixed.standardOutput)")
        #expect(fixed.standardOutput.contains("restored from the copy its libvirt domain keeps"))
        #expect(try manager.store.loadSpec(name).driver == .libvirt(connect: nil, pool: nil))
        #expect(try await NimbusBinary.run(["exec", name.rawValue, "--", "true"], home: home.url).status == 0)

        try await manager.stop(name, force: false, timeout: .seconds(180))
        #expect(try await manager.info(name).state == .stopped)
        #expect(try await LibvirtDaemon.virsh(["domstate", domain]).standardOutput.contains("shut off"))

        // info's disk usage is what the guest's disk takes in its pool (libvirt's allocation of the overlay
        // volume the guest wrote to), not the folder's own small files.
        let disks = try await LibvirtDaemon.virsh(["domblklist", domain, "--details"]).standardOutput
        let volume = try #require(
            disks.split(separator: "\n").first { $0.contains(" disk ") && $0.contains(" vda ") }?
                .split(separator: " ").last.map(String.init), "\(disks)")
        let volumeInfo = try await LibvirtDaemon.virsh(["vol-info", "--bytes", volume]).standardOutput
        let allocation = try #require(
            volumeInfo.firstMatch(of: #/Allocation:\s+(\d+) bytes/#).flatMap { UInt64($0.1) }, "\(volumeInfo)")
        #expect(allocation > 1 << 20, "\(volumeInfo)")
        #expect(try await manager.info(name).diskUsed?.bytes == allocation)

        let purge = try await NimbusBinary.run(["delete", "--purge", name.rawValue], home: home.url)
        #expect(purge.status == 0, "\(purge.standardError)")
        #expect(!manager.store.exists(name))
        #expect(try await LibvirtDaemon.domains().contains(domain) == false)
    }

    @Test("permission denied on libvirt's socket says how to get access, before anything is written")
    func permissionDenied() async throws {
        let home = try TemporaryDirectory("nimbus-libvirt-denied")
        defer { home.remove() }
        chmod(home.url.path, 0o777)
        // A socket only its owner (root) may use, reached by an unprivileged user: what a user outside the
        // libvirt group meets on a host whose socket is 0770 root:libvirt.
        let socket = home.url.appending(path: "libvirt-sock")
        try await ProgramRunner.run(
            "python3", ["-c", "import socket,sys; s=socket.socket(socket.AF_UNIX); s.bind(sys.argv[1])", socket.path])
        chmod(socket.path, 0o700)
        let result = try await ProgramRunner.output(
            "runuser",
            [
                "-u", "nobody", "--", "env", "NIMBUS_HOME=\(home.url.path)/nimbus", NimbusBinary.url.path, "launch",
                "--driver", "libvirt", "--connect", "qemu:///system?socket=\(socket.path)", "--no-wait",
                "file://" + (Prerequisites.guestImage?.path ?? "/missing"),
            ])
        #expect(result.status == NimbusError.Code.unsupported.exitStatus, "\(result.standardError)")
        #expect(result.standardError.contains("permission denied on libvirt's socket"), "\(result.standardError)")
        #expect(result.standardError.contains("libvirt group"))
        let instances = NimbusPaths.resolve(environment: ["NIMBUS_HOME": home.url.path + "/nimbus"]).instances
        #expect(((try? FileManager.default.contentsOfDirectory(atPath: instances.path)) ?? []).isEmpty)
    }
}

/// `nimbus launch --driver/--connect` mistakes, through the real binary: refused before anything is written.
@Suite("launch --driver and --connect")
struct LibvirtLaunchFlagTests {
    func launch(_ arguments: [String]) async throws -> (ProgramOutput, [String]) {
        try await TemporaryDirectory.with("nimbus-driver-flags") { home in
            let result = try await NimbusBinary.run(
                ["launch", "--no-wait"] + arguments + ["file:///missing.qcow2"], home: home.url)
            let instances = (try? FileManager.default.contentsOfDirectory(atPath: home.paths.instances.path)) ?? []
            return (result, instances)
        }
    }

    @Test("an unknown --driver is a usage error naming the drivers")
    func unknownDriver() async throws {
        let (result, instances) = try await launch(["--driver", "xen"])
        #expect(result.status == 64)
        #expect(
            result.standardError.contains("The value 'xen' is invalid for '--driver <driver>'"),
            "\(result.standardError)")
        #expect(instances.isEmpty)
    }

    @Test("--connect with --driver qemu is a usage error")
    func connectWithQEMU() async throws {
        let (result, _) = try await launch(["--driver", "qemu", "--connect", "qemu:///system"])
        #expect(result.status == 64)
        #expect(result.standardError.contains("--connect needs --driver libvirt"), "\(result.standardError)")
    }

    @Test("a --connect URI that does not parse is refused before the image is read")
    func badURI() async throws {
        let (result, instances) = try await launch(["--driver", "libvirt", "--connect", "qemu:/system"])
        #expect(result.status == 64, "\(result.standardError)")
        #expect(result.standardError.contains("libvirt URI \"qemu:/system\" does not parse"), "\(result.standardError)")
        #expect(instances.isEmpty)
    }
}
