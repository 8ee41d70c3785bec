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
    /// The instances on the network, each a file in this folder named by its address (`hosts/<address>`:
    /// a hosts(5) line; `dhcp/<address>`: a dnsmasq dhcp-host line), read by the DNS server as they come.
    public var hostsFolder: URL { folder.appending(path: "hosts", directoryHint: .isDirectory) }
    public var dhcpFolder: URL { folder.appending(path: "dhcp", directoryHint: .isDirectory) }

    /// The DNS domain of the network's names.
    public var domain: String { "\(name).internal" }

    public init(name: String, bridge: String, subnet: IPv4Subnet, nat: Bool, folder: URL) {
        self.name = name
        self.bridge = bridge
        self.subnet = subnet
        self.nat = nat
        self.folder = folder
    }
}

/// What a network's parts are doing.
public struct NetworkHealth: Sendable, Hashable {
    /// The bridge exists and is up with the gateway address.
    public var bridgeUp: Bool
    /// The DNS/DHCP server's pid, when it runs.
    public var dnsPID: Int32?
    /// NAT rules are in place (only asked of networks with `nat`).
    public var natActive: Bool

    public init(bridgeUp: Bool, dnsPID: Int32?, natActive: Bool) {
        self.bridgeUp = bridgeUp
        self.dnsPID = dnsPID
        self.natActive = natActive
    }

    /// Everything the network needs is there.
    public func isHealthy(for network: NetworkDefinition) -> Bool {
        bridgeUp && dnsPID != nil && (natActive || !network.nat)
    }

    /// What is missing, for people; empty when healthy.
    public func problems(for network: NetworkDefinition) -> [String] {
        var problems: [String] = []
        if !bridgeUp { problems.append("bridge \(network.bridge) is down") }
        if dnsPID == nil { problems.append("its dnsmasq is not running") }
        if network.nat, !natActive { problems.append("its NAT rules are missing") }
        return problems
    }
}

/// How a driver makes host networks. Every call is idempotent: `bringUp` of a healthy network changes
/// nothing, of a half-made one (after a host reboot, a killed dnsmasq) completes it.
public protocol MachineNetworks: Sendable {
    /// Why this host cannot make networks (not root, a program missing), or nil.
    func createProblem() -> String?
    /// Why this user cannot start machines on networks root made, or nil.
    func attachProblem() -> String?
    /// Makes the bridge, its address, the DNS/DHCP server and the NAT rules, whichever are missing.
    func bringUp(_ network: NetworkDefinition) async throws(NimbusError)
    /// Removes everything `bringUp` made.
    func tearDown(_ network: NetworkDefinition) async throws(NimbusError)
    /// What runs of the network now.
    func health(_ network: NetworkDefinition) async -> NetworkHealth
    /// Tells the DNS/DHCP server that hosts were removed (new ones it picks up by itself); false when this
    /// user may not (another user's server), which leaves stale names until its next start.
    @discardableResult
    func reload(_ network: NetworkDefinition) -> Bool
    /// Subnets in use on the host (its addresses and routes), which a new network must not overlap.
    func hostSubnets() async -> [IPv4Subnet]
}
