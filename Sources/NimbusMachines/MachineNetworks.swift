import Foundation
import NimbusCore

/// A host network as a driver makes it: a bridge with the subnet's first address, a DHCP and DNS server
/// that knows every instance on it, and NAT to the outside when asked.
public struct NetworkDefinition: Sendable, Hashable {
    /// The Nimbus name, a DNS label; instances resolve each other as `NAME` and `NAME.<name>.internal`.
    public var name: String
    /// The host bridge (at most 15 bytes, Linux's limit for an interface name).
    public var bridge: String
    public var subnet: IPv4Subnet
    /// Masquerade the subnet's traffic to the outside (nftables).
    public var nat: Bool
    /// The network's folder: the driver keeps its helpers' files (dnsmasq's pidfile, lock, config) there.
    public var folder: URL
    /// The instances on the network, as its DHCP and DNS server must know them.
    public var hosts: [Host]
    /// The instances on the network, each a file in this folder named by its address (`hosts/<address>`:
    /// a hosts(5) line; `dhcp/<address>`: a dnsmasq dhcp-host line), read by the DNS server as they come.
    public var hostsFolder: URL { folder.appending(path: "hosts", directoryHint: .isDirectory) }
    public var dhcpFolder: URL { folder.appending(path: "dhcp", directoryHint: .isDirectory) }

    /// The DNS domain of the network's names.
    public var domain: String { "\(name).internal" }

    public init(name: String, bridge: String, subnet: IPv4Subnet, nat: Bool, folder: URL, hosts: [Host] = []) {
        self.name = name
        self.bridge = bridge
        self.subnet = subnet
        self.nat = nat
        self.folder = folder
        self.hosts = hosts
    }

    /// An instance's place on the network: its name, fixed address and MAC.
    public struct Host: Sendable, Hashable {
        public var name: String
        public var address: IPv4Address
        public var macAddress: String

        public init(name: String, address: IPv4Address, macAddress: String) {
            self.name = name
            self.address = address
            self.macAddress = macAddress
        }
    }
}

/// What a network's parts are doing.
public struct NetworkHealth: Sendable, Hashable {
    /// The bridge exists and is up with the gateway address.
    public var bridgeUp: Bool
    /// The DNS/DHCP server's pid, when it runs and is known (a remote daemon's is not).
    public var dnsPID: Int32?
    /// The DNS/DHCP server runs.
    public var dnsRunning: Bool
    /// NAT rules are in place (only asked of networks with `nat`); nil when this user cannot tell (only root
    /// reads the host's nftables, and a user attaching a machine to root's network is not root).
    public var natActive: Bool?
    /// Instances of the network its DNS/DHCP server does not know (a driver that is told of hosts, rather
    /// than reading them from the network's folder, missed them).
    public var unknownHosts: [String]

    /// `dnsRunning` defaults to whether there is a `dnsPID`.
    public init(
        bridgeUp: Bool, dnsPID: Int32?, natActive: Bool?, unknownHosts: [String] = [], dnsRunning: Bool? = nil
    ) {
        self.bridgeUp = bridgeUp
        self.dnsPID = dnsPID
        self.dnsRunning = dnsRunning ?? (dnsPID != nil)
        self.natActive = natActive
        self.unknownHosts = unknownHosts
    }

    /// Everything the network needs is there.
    public func isHealthy(for network: NetworkDefinition) -> Bool {
        problems(for: network).isEmpty
    }

    /// What is missing, for people; empty when healthy.
    public func problems(for network: NetworkDefinition) -> [String] {
        var problems: [String] = []
        if !bridgeUp { problems.append("bridge \(network.bridge) is down") }
        if !dnsRunning { problems.append("its dnsmasq is not running") }
        if network.nat, natActive == false { problems.append("its NAT rules are missing") }
        if !unknownHosts.isEmpty {
            problems.append("its DNS server does not know \(unknownHosts.joined(separator: ", "))")
        }
        return problems
    }
}

/// How a driver makes host networks. Every call is idempotent: `bringUp` of a healthy network changes
/// nothing, of a half-made one (after a host reboot, a killed dnsmasq) completes it, and leaves the DNS/DHCP
/// server knowing `hosts`.
public protocol MachineNetworks: Sendable {
    /// Where the networks live, for people and for matching a network with a machine's driver: "this host",
    /// or the libvirt daemon's URI. A machine joins only networks of its own place.
    var place: String { get }
    /// Why this host cannot make networks (not root, a program missing), or nil.
    func createProblem() async -> String?
    /// Why this user cannot start machines on networks root made, or nil.
    func attachProblem() -> String?
    /// Makes the bridge, its address, the DNS/DHCP server and the NAT rules, whichever are missing.
    func bringUp(_ network: NetworkDefinition) async throws(NimbusError)
    /// Removes everything `bringUp` made.
    func tearDown(_ network: NetworkDefinition) async throws(NimbusError)
    /// What runs of the network now.
    func health(_ network: NetworkDefinition) async -> NetworkHealth
    /// Tells the DNS/DHCP server that `network.hosts` changed (an instance joined or left). A server that
    /// reads the network's folder picks up new hosts by itself and is only told of removals; one this user
    /// may not signal (another user's) keeps stale names until its next start.
    func hostsChanged(_ network: NetworkDefinition) async
    /// Subnets in use on the host (its addresses and routes), which a new network must not overlap.
    func hostSubnets() async -> [IPv4Subnet]
}

/// This host's own networks, as `ip` shows them.
public enum HostAddresses {
    /// The subnets of every IPv4 address and route of this host (`ip -j`), which a new network must not
    /// overlap.
    public static func subnets() async -> [IPv4Subnet] {
        var subnets: [IPv4Subnet] = []
        if let output = try? await ProgramRunner.output("ip", ["-j", "-4", "addr"]),
            let links = try? JSONSerialization.jsonObject(with: Data(output.standardOutput.utf8)) as? [[String: Any]]
        {
            for address in links.flatMap({ $0["addr_info"] as? [[String: Any]] ?? [] }) {
                guard let local = (address["local"] as? String).flatMap({ IPv4Address($0) }),
                    let prefix = address["prefixlen"] as? Int, (1...32).contains(prefix)
                else { continue }
                subnets.append(IPv4Subnet(containing: local, prefixLength: prefix))
            }
        }
        if let output = try? await ProgramRunner.output("ip", ["-j", "-4", "route", "show", "table", "all"]),
            let routes = try? JSONSerialization.jsonObject(with: Data(output.standardOutput.utf8)) as? [[String: Any]]
        {
            for route in routes {
                guard let destination = route["dst"] as? String, destination != "default" else { continue }
                let text = destination.contains("/") ? destination : destination + "/32"
                if let subnet = try? IPv4Subnet(parsing: text, what: "route") { subnets.append(subnet) }
            }
        }
        return subnets
    }
}
