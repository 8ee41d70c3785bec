import Foundation
import NimbusCore
import NimbusDrivers
import NimbusMachines
import NimbusSeed
import NimbusTestSupport
import Testing
import Yams

@testable import NimbusInstances
@testable import NimbusQEMU

/// Networks without a bridge: names, `--network` values, address reservations in a store folder, the guest's
/// network-config, dnsmasq's configuration and the fleet file's `networks:`.
@Suite("Networks (no root)")
struct NetworkUnitTests {
    @Test("network names are DNS labels; bridges fit Linux's 15 bytes")
    func names() throws {
        try NetworkSpec.checkName("n1")
        for bad in ["", "N1", "a_b", "-a", "a-", "a.b", String(repeating: "a", count: 64)] {
            let error = #expect(throws: NimbusError.self) { try NetworkSpec.checkName(bad) }
            #expect(error?.code == .invalidArgument)
            #expect(error?.message.contains("is not a DNS label") == true)
        }
        #expect(NetworkSpec.bridgeName(for: "backend") == "nmb-backend")
        let long = NetworkSpec.bridgeName(for: "a-rather-long-network-name")
        #expect(long.count <= 15 && long.hasPrefix("nmb-"))
        #expect(long == NetworkSpec.bridgeName(for: "a-rather-long-network-name"))
    }

    @Test("--network NAME[:ADDRESS] parses; a bad address names the form")
    func attachments() throws {
        #expect(try NetworkAttachment(parsing: "n1") == NetworkAttachment(network: "n1"))
        #expect(try NetworkAttachment(parsing: "n1:192.168.100.20").address?.description == "192.168.100.20")
        let error = #expect(throws: NimbusError.self) { try NetworkAttachment(parsing: "n1:192.168.100") }
        #expect(error?.message.contains("write NAME or NAME:ADDRESS") == true)
        #expect(throws: NimbusError.self) { try NetworkAttachment(parsing: "Bad:1.2.3.4") }
        let mac = NetworkAttachment.macAddress(instance: try InstanceName("web"), network: "n1")
        #expect(mac.hasPrefix("52:54:00:") && mac.count == 17)
        #expect(mac != NetworkAttachment.macAddress(instance: try InstanceName("web"), network: "n2"))
    }

    /// A network folder made by the store, with no bridge behind it.
    func withNetwork(_ body: (NetworkStore, NetworkSpec) throws -> Void) throws {
        let home = try TemporaryDirectory("nimbus-net-unit")
        defer { home.remove() }
        let store = NetworkStore(paths: home.paths)
        let spec = NetworkSpec(
            name: "n1", subnet: try IPv4Subnet(parsing: "192.168.77.0/29", what: ""), nat: false)
        try store.create(spec)
        try body(store, spec)
    }

    @Test("addresses: lowest free first, a pinned one honoured, taken or outside ones refused, full subnet said")
    func reservations() throws {
        try withNetwork { store, spec in
            let a = try store.reserve(
                spec, instance: InstanceName("a"), macAddress: "52:54:00:00:00:0a", address: nil,
                isStale: { _ in false })
            #expect(a.description == "192.168.77.2")
            let pinned = try store.reserve(
                spec, instance: InstanceName("b"), macAddress: "52:54:00:00:00:0b",
                address: IPv4Address("192.168.77.5"), isStale: { _ in false })
            #expect(pinned.description == "192.168.77.5")
            let taken = #expect(throws: NimbusError.self) {
                try store.reserve(
                    spec, instance: InstanceName("c"), macAddress: "52:54:00:00:00:0c",
                    address: IPv4Address("192.168.77.5"), isStale: { _ in false })
            }
            #expect(taken?.message.contains("the address is taken by b") == true)
            let outside = #expect(throws: NimbusError.self) {
                try store.reserve(
                    spec, instance: InstanceName("c"), macAddress: "52:54:00:00:00:0c",
                    address: IPv4Address("192.168.77.1"), isStale: { _ in false })
            }
            #expect(outside?.code == .invalidArgument)
            #expect(outside?.message.contains("192.168.77.1 is the host's") == true)
            let sameName = #expect(throws: NimbusError.self) {
                try store.reserve(
                    spec, instance: InstanceName("a"), macAddress: "52:54:00:00:00:0d", address: nil,
                    isStale: { _ in false })
            }
            #expect(sameName?.message.contains("the name a is taken on network n1") == true)
            // Guests fit in .2 to .6 of a /29: .2 and .5 are taken, three more fit.
            for name in ["c", "d", "e"] {
                _ = try store.reserve(
                    spec, instance: InstanceName(name), macAddress: "52:54:00:00:00:01", address: nil,
                    isStale: { _ in false })
            }
            let full = #expect(throws: NimbusError.self) {
                try store.reserve(
                    spec, instance: InstanceName("f"), macAddress: "52:54:00:00:00:0f", address: nil,
                    isStale: { _ in false })
            }
            #expect(full?.message.contains("has no free address") == true)
            #expect(store.hosts(spec).map(\.instance) == ["a", "c", "d", "b", "e"])
            let b = try #require(store.hosts(spec).first { $0.instance == "b" })
            #expect(b.macAddress == "52:54:00:00:00:0b")
            store.release(spec, address: b.address)
            #expect(!store.hosts(spec).contains { $0.instance == "b" })
            // dnsmasq's files: a hosts line and a dhcp-host line per instance.
            let definition = store.definition(spec)
            #expect(
                try String(contentsOf: definition.hostsFolder.appending(path: "192.168.77.2"), encoding: .utf8)
                    == "192.168.77.2 a\n")
            #expect(
                try String(contentsOf: definition.dhcpFolder.appending(path: "192.168.77.2"), encoding: .utf8)
                    == "52:54:00:00:00:0a,192.168.77.2,a\n")
        }
    }

    @Test("a stale entry of the same name (its instance is gone) is replaced")
    func staleEntry() throws {
        try withNetwork { store, spec in
            _ = try store.reserve(
                spec, instance: InstanceName("a"), macAddress: "52:54:00:00:00:0a",
                address: IPv4Address("192.168.77.3"), isStale: { _ in false })
            let again = try store.reserve(
                spec, instance: InstanceName("a"), macAddress: "52:54:00:00:00:0a", address: nil, isStale: { _ in true }
            )
            #expect(again.description == "192.168.77.2")
            #expect(store.hosts(spec).count == 1)
        }
    }

    @Test("dnsmasq serves names only locally, DHCP only to reservations, and a router only with NAT")
    func dnsmasqConfig() throws {
        let definition = NetworkDefinition(
            name: "n1", bridge: "nmb-n1", subnet: try IPv4Subnet(parsing: "192.168.100.0/24", what: ""), nat: false,
            folder: URL(fileURLWithPath: "/var/lib/nimbus/networks/n1"))
        let config = QEMUNetworks.dnsmasqConfig(definition)
        for line in [
            "interface=nmb-n1", "bind-interfaces", "listen-address=192.168.100.1", "local=/n1.internal/",
            "domain=n1.internal", "expand-hosts", "hostsdir=/var/lib/nimbus/networks/n1/hosts",
            "dhcp-hostsdir=/var/lib/nimbus/networks/n1/dhcp", "dhcp-range=192.168.100.0,static,255.255.255.0",
            "dhcp-option=option:router", "pid-file=/var/lib/nimbus/networks/n1/dnsmasq.pid",
        ] {
            #expect(config.split(separator: "\n").contains(Substring(line)), "\(line)")
        }
        var nat = definition
        nat.nat = true
        #expect(QEMUNetworks.dnsmasqConfig(nat).contains("dhcp-option=option:router,192.168.100.1\n"))
    }

    @Test("NAT rules a user cannot read are not a problem; missing ones are, only on a NAT network")
    func natHealth() throws {
        var definition = NetworkDefinition(
            name: "n1", bridge: "nmb-n1", subnet: try IPv4Subnet(parsing: "192.168.100.0/24", what: ""), nat: true,
            folder: URL(fileURLWithPath: "/var/lib/nimbus/networks/n1"))
        #expect(NetworkHealth(bridgeUp: true, dnsPID: 7, natActive: nil).isHealthy(for: definition))
        #expect(NetworkHealth(bridgeUp: true, dnsPID: 7, natActive: true).isHealthy(for: definition))
        #expect(
            NetworkHealth(bridgeUp: true, dnsPID: 7, natActive: false).problems(for: definition) == [
                "its NAT rules are missing"
            ])
        definition.nat = false
        #expect(NetworkHealth(bridgeUp: true, dnsPID: 7, natActive: false).isHealthy(for: definition))
    }

    @Test("the guest's network-config gets a MAC-matched static NIC with the network's DNS and no gateway")
    func guestConfig() throws {
        let home = try TemporaryDirectory("nimbus-net-guest")
        defer { home.remove() }
        let manager = InstanceManager(paths: home.paths, config: NimbusConfig())
        try manager.networks.store.create(
            NetworkSpec(name: "n1", subnet: try IPv4Subnet(parsing: "192.168.100.0/24", what: ""), nat: false))
        var config = InstanceConfig()
        try manager.builder.addNetworks(
            [NetworkAttachment(network: "n1", address: IPv4Address("192.168.100.9"), macAddress: "52:54:00:aa:bb:cc")],
            to: &config)
        let seed = try NoCloudSeed(config: config, name: "web")
        let text = String(decoding: seed.networkConfig, as: UTF8.self)
        #expect(text.contains("macaddress: \"52:54:00:aa:bb:cc\""), "\(text)")
        #expect(text.contains("- \"192.168.100.9/24\""), "\(text)")
        #expect(text.contains("- n1.internal"), "\(text)")
        #expect(!text.contains("gateway") && !text.contains("routes"), "\(text)")
        let userData = String(decoding: seed.userData, as: UTF8.self)
        #expect(userData.contains("nimbus-resolver"), "\(userData)")
    }

    @Test("--default-route: the network's gateway on its NIC, the user-mode NIC static with no gateway")
    func defaultRoute() throws {
        let home = try TemporaryDirectory("nimbus-net-route")
        defer { home.remove() }
        let manager = InstanceManager(paths: home.paths, config: NimbusConfig())
        try manager.networks.store.create(
            NetworkSpec(name: "out", subnet: try IPv4Subnet(parsing: "192.168.120.0/24", what: ""), nat: true))
        var config = InstanceConfig()
        config.network.interfaces = [.init(macAddress: "52:54:00:00:00:01", dhcp4: true)]
        try manager.builder.addNetworks(
            [
                NetworkAttachment(
                    network: "out", address: IPv4Address("192.168.120.9"), macAddress: "52:54:00:aa:bb:cc",
                    defaultRoute: true)
            ], to: &config)
        #expect(config.network.interfaces[0].dhcp4 == false)
        #expect(config.network.interfaces[0].addresses == ["10.0.2.15/24"])
        #expect(config.network.interfaces[0].gateway4 == nil)
        #expect(config.network.interfaces[1].gateway4 == "192.168.120.1")
        let text = String(decoding: try NoCloudSeed(config: config, name: "web").networkConfig, as: UTF8.self)
        #expect(text.contains("gateway4: \"192.168.120.1\""), "\(text)")
        // The flag survives instance.yaml, and files without it load.
        let attachment = NetworkAttachment(network: "out", address: IPv4Address("192.168.120.9"), defaultRoute: true)
        let yaml = try YAMLEncoder().encode(attachment)
        #expect(try YAMLDecoder().decode(NetworkAttachment.self, from: yaml).defaultRoute)
        #expect(try YAMLDecoder().decode(NetworkAttachment.self, from: "network: out\n").defaultRoute == false)
    }

    @Test("a fleet file's networks are read and checked; instances name them as launch --network does")
    func fleet() throws {
        let home = try TemporaryDirectory("nimbus-net-fleet")
        defer { home.remove() }
        let file = home.url.appending(path: "fleet.yaml")
        try """
        networks:
          back: {}
          front: {subnet: 192.168.50.0/24, nat: true}
        instances:
          - name: web
            image: debian:12
            networks: [back, "front:192.168.50.10"]
            default-route: front
        """.write(to: file, atomically: true, encoding: .utf8)
        let fleet = try FleetFile(url: file, config: NimbusConfig())
        #expect(fleet.specs[0].networks.map(\.defaultRoute) == [false, true])
        #expect(fleet.networks.map(\.name) == ["back", "front"])
        #expect(fleet.networks[1].subnet?.description == "192.168.50.0/24" && fleet.networks[1].nat)
        #expect(fleet.specs[0].networks.map(\.network) == ["back", "front"])
        #expect(fleet.specs[0].networks[1].address?.description == "192.168.50.10")
        try """
        networks:
          back: {subnet: 192.168.50.7/24}
        instances: []
        """.write(to: file, atomically: true, encoding: .utf8)
        let error = #expect(throws: NimbusError.self) { try FleetFile(url: file, config: NimbusConfig()) }
        #expect(error?.message.contains("networks.back") == true, "\(error?.message ?? "")")
    }
}
