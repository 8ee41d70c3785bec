import Foundation
import NimbusCore
import NimbusDrivers
import NimbusInstances
import NimbusMachines
import NimbusTestSupport
import Testing

/// `fedora-coreos:stable` for real: the CoreOS-like guest of scripts/build-coreos-image (no cloud-init;
/// Debian's Ignition 2.14 in a dracut initramfs, run on the first boot only, as Fedora CoreOS's GRUB does it),
/// pulled from a Fedora CoreOS stream mirror laid out as builds.coreos.fedoraproject.org lays it out. Ignition
/// applies the personality Nimbus renders from a cloud-config and the user's own Ignition config.
@Suite("CoreOS with Ignition", .serialized, .requires(.coreOS))
struct CoreOSTests {
    /// Held while this test runs: at most `GuestSlot.count` guest-booting tests at once.
    let guestSlot: GuestSlot
    let home: TemporaryDirectory
    let manager: InstanceManager

    init() async throws {
        guestSlot = try await GuestSlot(expectedSeconds: 330)
        home = try TemporaryDirectory.guestHome("nimbus-coreos")
        // The mirror through config.yaml, as a user points Nimbus at one.
        let mirror = Prerequisites.coreOSMirror?.absoluteString ?? "file:///missing-coreos-mirror/"
        try FileManager.default.createDirectory(at: home.paths.config, withIntermediateDirectories: true)
        try (TemporaryDirectory.guestConfig + "mirrors:\n  fedora-coreos: \(mirror)\n").write(
            to: home.paths.configFile, atomically: true, encoding: .utf8)
        manager = InstanceManager(paths: home.paths, config: try NimbusConfig.load(paths: home.paths)) {
            print("    \($0)")
        }
    }

    /// Runs `command` in the instance through `sh -c` and returns its stdout, trimmed; a non-zero exit fails.
    func guest(_ name: InstanceName, _ command: String, sourceLocation: SourceLocation = #_sourceLocation) async throws
        -> String
    {
        let result = try await manager.sshAccess(name).run(["sh", "-c", command])
        #expect(result.status == 0, "`\(command)` in \(name): \(result.standardError)", sourceLocation: sourceLocation)
        return result.standardOutput.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    static let cloudConfig = """
        #cloud-config
        hostname: coreos-one
        users:
          - name: dev
            groups: [wheel]
            shell: /bin/bash
        write_files:
          - path: /etc/nimbus-test.conf
            content: "written by Ignition\\n"
            permissions: "0640"
        runcmd:
          - [sh, -c, "echo ran >> /var/tmp/runcmd-count"]
        """

    /// The user's own config: a file Nimbus does not write, in a spec newer than Nimbus's own part needs.
    static let userIgnition = #"""
        {"ignition": {"version": "3.3.0"},
         "storage": {"files": [{"path": "/etc/from-user.conf", "mode": 384,
                                "contents": {"source": "data:,mine%0A"}}]}}
        """#

    func spec(_ name: String, driver: String) throws -> InstanceSpec {
        var spec = InstanceSpec(name: try InstanceName(name), image: "fedora-coreos:stable")
        spec.driver = try DriverChoice(name: driver, connect: nil, pool: nil)
        spec.memory = .mebibytes(1024)
        spec.setUserData(Array(Self.cloudConfig.utf8))
        spec.ignition = Self.userIgnition
        return spec
    }

    @Test(
        "Ignition applies hostname, users, keys, files with modes, runcmd as a unit and the user's config; a restart does not run it again (QEMU)"
    )
    func launchQEMU() async throws {
        try await scenario(driver: "qemu")
    }

    @Test(
        "Ignition applies hostname, users, keys, files with modes, runcmd as a unit, the user's config and a data volume (libvirt)",
        .requires(.libvirt))
    func launchLibvirt() async throws {
        let lease = try await LibvirtDaemon.lease()
        defer { lease.release() }
        try await scenario(driver: "libvirt")
    }

    func scenario(driver: String) async throws {
        let name = try InstanceName("coreos-" + driver + "-" + UUID().uuidString.prefix(4).lowercased())
        // With QEMU, on a network: Ignition writes its NIC's configuration (networkd here, NetworkManager on
        // Fedora CoreOS), and the network's dnsmasq answers for the instance's name.
        let network = driver == "qemu" ? "c" + UUID().uuidString.prefix(4).lowercased() : nil
        // Awaited, not left to a Task: a test that ends the run would leave its guest and network (host-wide).
        func cleanUp() async {
            try? await manager.delete(name, purge: true)
            try? await manager.volumes.delete(Self.volume)
            if let network { try? await manager.networks.delete(network) }
            home.remove()
        }
        do {
            try await scenarioSteps(name: name, network: network, driver: driver)
        } catch {
            await cleanUp()
            throw error
        }
        await cleanUp()
    }

    func scenarioSteps(name: InstanceName, network: String?, driver: String) async throws {
        var spec = try spec(name.rawValue, driver: driver)
        if let network {
            let subnet = try IPv4Subnet(
                parsing: "10.\(UInt8.random(in: 200...250)).\(UInt8.random(in: 0...250)).0/24", what: "subnet")
            try await manager.networks.create(name: network, subnet: subnet, nat: false)
            spec.networks = [NetworkAttachment(network: network, address: IPv4Address(subnet.network.value + 9))]
        }
        // A data volume: Ignition makes its filesystem at first boot, a mount unit mounts it at every boot.
        spec.volumes = [VolumeAttachment(volume: Self.volume, mountPoint: "/var/lib/app-data")]
        let info = try await manager.launch(
            spec, volumeSizes: [Self.volume: .mebibytes(256)], wait: true, timeout: .seconds(900))
        #expect(info.state == .running)
        #expect(info.cloudInit == "done")
        #expect(
            try await guest(name, "findmnt -n -o FSTYPE,LABEL /var/lib/app-data | tr -s ' '")
                == "ext4 nv-\(Self.volume)")
        _ = try await guest(name, "echo kept | sudo -n tee /var/lib/app-data/kept >/dev/null")

        // exec reaches `core` with the pinned host key Ignition wrote (StrictHostKeyChecking=yes, no TOFU).
        #expect(try await guest(name, "id -un") == "core")
        #expect(try await guest(name, "hostname") == "coreos-one")
        #expect(try await guest(name, "id -nG dev").split(separator: " ").contains("wheel"))
        #expect(try await guest(name, "stat -c '%a %U' /etc/nimbus-test.conf") == "640 root")
        #expect(try await guest(name, "sudo -n cat /etc/nimbus-test.conf") == "written by Ignition")
        #expect(try await guest(name, "sudo -n stat -c '%a' /etc/ssh/ssh_host_ed25519_key") == "600")
        #expect(try await guest(name, "sudo -n cat /etc/from-user.conf") == "mine")
        #expect(try await guest(name, "sudo -n stat -c '%a' /etc/from-user.conf") == "600")
        // runcmd as a oneshot unit, enabled by Ignition: it ran once.
        #expect(try await guest(name, "cat /var/tmp/runcmd-count") == "ran")
        if let network {
            let address = try #require(info.networks.first?.address, "launch gave no address on \(network)")
            #expect(try await guest(name, "ip -4 -o addr show").contains(" \(address)/24 "))
            #expect(try await guest(name, "getent hosts \(name).\(network).internal").hasPrefix(address))
        }
        // A file Ignition wrote, changed by hand, keeps the change over a restart: Ignition runs once. The
        // first-boot flag lives in the guest (/boot/ignition.firstboot), the same under either driver, and
        // libvirt's stop and start are the lifecycle scenario's: the restart is checked with QEMU only (one
        // boot less in the suite).
        guard driver == "qemu" else { return }
        _ = try await guest(name, "echo changed | sudo -n tee /etc/nimbus-test.conf >/dev/null")
        try await manager.stop(name, force: false, timeout: .seconds(120))
        try await manager.start(name, wait: true, timeout: .seconds(900))
        #expect(try await guest(name, "sudo -n cat /etc/nimbus-test.conf") == "changed")
        #expect(try await guest(name, "grep -c ignition.firstboot /proc/cmdline || true") == "0")
        #expect(try await guest(name, "cat /var/tmp/runcmd-count") == "ran")
        #expect(try await guest(name, "cat /var/lib/app-data/kept") == "kept")
    }

    /// The data volume of the scenario.
    static let volume = "cdata"

    @Test("a config Ignition rejects at boot fails the launch at once, naming the stage and quoting Ignition")
    func rejectedAtBoot() async throws {
        let name = try InstanceName("coreos-bad")
        defer {
            let (manager, home) = (manager, home)
            Task {
                try? await manager.delete(name, purge: true)
                home.remove()
            }
        }
        var spec = InstanceSpec(name: name, image: "fedora-coreos:stable")
        spec.memory = .mebibytes(1024)
        // Valid to ignition-validate, impossible at boot: the owner does not exist in the guest.
        spec.ignition = #"""
            {"ignition": {"version": "3.3.0"},
             "storage": {"files": [{"path": "/etc/owned", "user": {"name": "nobody-here"},
                                    "contents": {"source": "data:,x"}}]}}
            """#
        do {
            try await manager.launch(spec, wait: true, timeout: .seconds(900))
            Issue.record("the launch succeeded")
        } catch let error as NimbusError {
            #expect(error.code == .guestSetup, "\(error.message)")
            #expect(error.message.contains("Ignition failed in the guest at its files stage"), "\(error.message)")
            #expect(error.message.contains("nobody-here"), "\(error.message)")
        }
        // Awaited here: the deferred Task alone is lost when this is the run's last test, leaking the guest.
        try? await manager.delete(name, purge: true)
    }
}
