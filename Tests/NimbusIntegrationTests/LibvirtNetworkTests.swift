import Foundation
import NimbusCore
import NimbusDrivers
import NimbusInstances
import NimbusTestSupport
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// `nimbus network` with the libvirt driver, for real: libvirt networks on the local libvirtd (its bridge,
/// dnsmasq and firewall rules), hosts told with virNetworkUpdate, and the Debian guest of
/// scripts/build-guest-image on both ends. The same scenario as the QEMU driver's ("Networks with guests"), with
/// a libvirt-group user's instance on the second network.
@Suite(
    "libvirt networks with guests", .serialized,
    .requires(.guest, .libvirt, .programs("runuser", "curl")))
struct LibvirtNetworkTests {
    let home: TemporaryDirectory
    let manager: InstanceManager
    let image: URL
    let suffix = String(UUID().uuidString.prefix(4)).lowercased()

    init() async throws {
        home = try TemporaryDirectory.guestHome("nimbus-lvnet-e2e")
        chmod(home.url.path, 0o755)
        manager = InstanceManager(paths: home.paths, config: try NimbusConfig.load(paths: home.paths)) {
            print("    \($0)")
        }
        image = Prerequisites.guestImage ?? URL(fileURLWithPath: "/missing-guest-image")
    }

    func guest(_ name: String, _ command: String) async throws -> ProgramOutput {
        try await manager.sshAccess(try InstanceName(name)).run(["sh", "-c", command])
    }

    func nimbus(_ arguments: [String]) async throws -> ProgramOutput {
        try await NimbusBinary.run(arguments, home: home.url)
    }

    /// `nimbus ARGUMENTS` as `nobody` with the libvirt group, the way a user the administrator let use
    /// libvirt runs it.
    static func asLibvirtUser(_ arguments: [String], home: URL, networks: URL) async throws -> ProgramOutput {
        try await ProgramRunner.output(
            "runuser",
            [
                "-u", "nobody", "-G", "libvirt", "--", "env", "NIMBUS_HOME=\(home.path)",
                "NIMBUS_NETWORKS_DIR=\(networks.path)", NimbusBinary.url.path,
            ] + arguments)
    }

    /// The dnsmasq processes libvirt runs for Nimbus network `name`.
    static func dnsmasqProcesses(of name: String) -> [Int32] {
        ((try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []).compactMap { entry in
            guard let pid = Int32(entry), PIDFile.isAlive(pid),
                let data = FileManager.default.contents(atPath: "/proc/\(entry)/cmdline")
            else { return nil }
            let line = String(decoding: data.map { $0 == 0 ? 0x20 : $0 }, as: UTF8.self)
            return line.contains("/dnsmasq/nimbus-\(name).conf") ? pid : nil
        }
    }

    @Test(
        "two instances on n1 by name, HTTP from the host, a libvirt-group user's on n2 apart, dnsmasq brought back, prune"
    )
    func scenario() async throws {
        // Two slots: two guests boot at a time, web and db; then the instance on n2 boots.
        let slots = try await GuestSlot(guests: 2, expectedSeconds: 600)
        defer { withExtendedLifetime(slots) {} }
        let lease = try await LibvirtDaemon.lease()
        defer { lease.release() }
        let userHome = try TemporaryDirectory("nimbus-lvnet-user")
        func cleanUp() async {
            _ = try? await Self.asLibvirtUser(
                ["delete", "--purge", "u"], home: userHome.url, networks: home.paths.networks)
            for name in manager.store.names() { try? await manager.delete(name, purge: true) }
            for network in manager.networks.store.names() { try? await manager.networks.delete(network) }
            for network in ["a\(suffix)", "b\(suffix)"] {
                _ = try? await LibvirtDaemon.virsh(["net-destroy", "nimbus-\(network)"])
                _ = try? await LibvirtDaemon.virsh(["net-undefine", "nimbus-\(network)"])
            }
            home.remove()
            userHome.remove()
        }
        do {
            try await scenarioSteps(userHome: userHome)
        } catch {
            await cleanUp()
            throw error
        }
        await cleanUp()
    }

    func scenarioSteps(userHome: TemporaryDirectory) async throws {
        let n1 = "a\(suffix)"
        let n2 = "b\(suffix)"
        let subnet = try IPv4Subnet(
            parsing: "10.\(UInt8.random(in: 200...250)).\(UInt8.random(in: 0...250)).0/24", what: "subnet")
        let pinned = IPv4Address(subnet.network.value + 50)
        let fleet = home.url.appending(path: "fleet.yaml")
        try """
        networks:
          \(n1): {subnet: \(subnet)}
        defaults:
          image: file://\(image.path)
          memory: 768M
          driver: libvirt
        instances:
          - name: web
            networks: [\(n1)]
          - name: db
            networks: ["\(n1):\(pinned)"]
        """.write(to: fleet, atomically: true, encoding: .utf8)
        var result = try await nimbus(["apply", "-f", fleet.path, "--timeout", "900"])
        #expect(result.status == 0, "\(result.standardError)")
        #expect(result.standardOutput.contains("created network \(n1)"), "\(result.standardOutput)")
        let info = try await manager.networks.info(n1)
        #expect(info.driver == "libvirt" && info.state == "active", "\(info)")
        // libvirt knows both, as DHCP reservations and names.
        let xml = try await LibvirtDaemon.virsh(["net-dumpxml", "nimbus-\(n1)"]).standardOutput
        #expect(xml.contains("name='db' ip='\(pinned)'") && xml.contains("<hostname>web</hostname>"), "\(xml)")

        // Names both ways, bare and under the network's domain; db at its pinned address.
        result = try await guest("web", "getent hosts db; ping -c1 -W5 db.\(n1).internal")
        #expect(
            result.status == 0 && result.standardOutput.contains("\(pinned)"),
            "\(result.standardOutput) \(result.standardError)")
        result = try await guest("db", "ping -c1 -W5 web")
        #expect(result.status == 0, "\(result.standardError)")
        let webInfo = try await manager.info(try InstanceName("web"))
        #expect(webInfo.networks.first?.name == n1)

        // The host reaches a guest's server at its network address.
        result = try await guest(
            "db",
            "mkdir -p /tmp/www && echo served-by-db > /tmp/www/index.html && cd /tmp/www && (setsid python3 -m http.server 8080 >/dev/null 2>&1 &) && sleep 2"
        )
        #expect(result.status == 0, "\(result.standardError)")
        // Retried while refused: python3 starts slowly in a TCG guest beside others (CI once found no server yet).
        let page = try await ProgramRunner.output(
            "curl",
            [
                "-sS", "--max-time", "10", "--retry", "10", "--retry-connrefused", "--retry-delay", "3",
                "http://\(pinned):8080/",
            ])
        #expect(page.standardOutput.contains("served-by-db"), "\(page.standardError)")

        result = try await nimbus(["network", "delete", n1])
        #expect(result.status == 5 && result.standardError.contains("in use by"), "\(result.standardError)")

        // `u` on n2, a libvirt-group user's where this libvirtd lets one in, boots meanwhile.
        result = try await nimbus(["network", "create", n2, "--driver", "libvirt"])
        #expect(result.status == 0, "\(result.standardError)")
        let userCanLaunch = await LibvirtDaemon.grantsLibvirtGroup()
        if !userCanLaunch {
            print(
                "    skipped: a libvirt-group user's launch (this libvirtd was not started by the tests, and refuses users other than root); root launches u"
            )
        }
        /// `nimbus ARGUMENTS` as the one who launches `u`.
        func asLauncher(_ arguments: [String]) async throws -> ProgramOutput {
            guard userCanLaunch else { return try await nimbus(arguments) }
            return try await Self.asLibvirtUser(arguments, home: userHome.url, networks: home.paths.networks)
        }
        var uImage = image
        if userCanLaunch {
            chmod(userHome.url.path, 0o777)
            uImage = userHome.url.appending(path: "guest.qcow2")
            try FileManager.default.copyItem(at: image, to: uImage)
            chmod(uImage.path, 0o644)
        }
        async let launchedU = asLauncher([
            "launch", "file://\(uImage.path)", "--name", "u", "--memory", "768M", "--driver", "libvirt", "--network",
            n2, "--timeout", "900",
        ])

        // n1's dnsmasq killed while its instances run: doctor says so and --fix brings it back, names resolve
        // again. (That `start` brings a libvirt network back is UpgradeGuestTests.libvirt's rollback.)
        for pid in Self.dnsmasqProcesses(of: n1) { kill(pid, SIGKILL) }
        #expect(try await manager.networks.info(n1).state == "degraded")
        result = try await nimbus(["doctor"])
        #expect(
            result.standardOutput.contains("network \(n1)") && result.standardOutput.contains("dnsmasq is not running"),
            "\(result.standardOutput)")
        result = try await nimbus(["doctor", "--fix"])
        #expect(result.standardOutput.contains("brought back"), "\(result.standardOutput)")
        #expect(try await manager.networks.info(n1).state == "active")
        result = try await guest("db", "ip -4 -o addr show")
        #expect(result.standardOutput.contains("\(pinned)/"), "\(result.standardOutput)")
        result = try await guest(
            "web", "for i in 1 2 3; do getent hosts db.\(n1).internal && exit 0; sleep 3; done; exit 1")
        #expect(result.status == 0 && result.standardOutput.contains("\(pinned)"), "\(result.standardError)")

        let uResult = try await launchedU
        #expect(uResult.status == 0, "\(uResult.standardError)")
        // n2 is apart: `u` resolves neither web nor db, and its n2 NIC reaches neither.
        result = try await asLauncher([
            "exec", "u", "--", "sh", "-c", "getent hosts web || getent hosts db.\(n1).internal",
        ])
        #expect(result.status != 0, "\(result.standardOutput)")
        result = try await asLauncher([
            "exec", "u", "--", "sh", "-c",
            "nic=$(ip -4 -o addr show | awk '$4 !~ /^10\\.0\\.2\\./ && $2 != \"lo\" {print $2}'); ping -c1 -W3 -I \"$nic\" \(pinned)",
        ])
        #expect(result.status != 0, "\(result.standardOutput)")

        // Prune: with `u` gone, a fleet file without instances takes web, db and n1 away, and the libvirt
        // networks with them.
        result = try await asLauncher(["delete", "--purge", "u"])
        #expect(result.status == 0, "\(result.standardError)")
        try "networks:\n  \(n1): {subnet: \(subnet)}\ninstances: []\n".write(
            to: fleet, atomically: true, encoding: .utf8)
        result = try await nimbus(["apply", "-f", fleet.path, "--prune"])
        #expect(result.status == 0, "\(result.standardError)")
        #expect(result.standardOutput.contains("pruned network \(n1)"), "\(result.standardOutput)")
        result = try await nimbus(["network", "delete", n2])
        #expect(result.status == 0, "\(result.standardError)")
        let left = try await LibvirtDaemon.virsh(["net-list", "--all", "--name"]).standardOutput
        #expect(!left.contains("nimbus-\(n1)") && !left.contains("nimbus-\(n2)"), "\(left)")
    }

    @Test("a libvirt network is refused to another driver and to another daemon, before anything is made")
    func placeMismatch() async throws {
        let lease = try await LibvirtDaemon.lease()
        defer { lease.release() }
        let network = "c\(suffix)"
        do {
            try await placeMismatchSteps(network)
        } catch {
            _ = try? await nimbus(["network", "delete", network])
            home.remove()
            throw error
        }
        let deleted = try await nimbus(["network", "delete", network])
        #expect(deleted.status == 0, "\(deleted.standardError)")
        home.remove()
    }

    func placeMismatchSteps(_ network: String) async throws {
        var result = try await nimbus(["network", "create", network, "--connect", "qemu:///system"])
        #expect(result.status == 64 && result.standardError.contains("--connect needs --driver libvirt"))
        result = try await nimbus(["network", "create", network, "--driver", "libvirt"])
        #expect(result.status == 0, "\(result.standardError)")
        let missing = "file:///missing-image.qcow2"
        result = try await nimbus(["launch", "--no-wait", "--network", network, missing])
        #expect(result.status == 64, "\(result.standardError)")
        #expect(result.standardError.contains("is for the libvirt driver"), "\(result.standardError)")
        result = try await nimbus([
            "launch", "--no-wait", "--driver", "libvirt", "--connect", "qemu+tcp://192.0.2.1/system", "--network",
            network, missing,
        ])
        #expect(result.status == 64, "\(result.standardError)")
        #expect(result.standardError.contains("instances on different hosts cannot share a network"))
        #expect(((try? FileManager.default.contentsOfDirectory(atPath: home.paths.instances.path)) ?? []).isEmpty)
    }
}
