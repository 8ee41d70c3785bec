import Foundation
import NimbusCore
import NimbusDrivers
import NimbusInstances
import NimbusLibvirt
import NimbusMachines
import NimbusTestSupport
import Testing

/// Launching through libvirt without access to its socket. The guest path through libvirt (launch, a guest
/// power-off, start, recover, doctor --fix, the audit, purge) is InstanceLifecycleTests' libvirt scenario.
@Suite("Instances through libvirt", .requires(.guest, .libvirt, .programs("runuser")))
struct LibvirtTests {
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
