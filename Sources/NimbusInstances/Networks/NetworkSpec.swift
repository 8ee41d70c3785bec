import Foundation
import NimbusCore
import NimbusMachines

/// A host network as the user made it (`nimbus network create`), stored as `network.yaml` in its folder.
public struct NetworkSpec: Codable, Sendable, Equatable {
    /// The format of this file.
    public var version: Int = 1
    /// A DNS label: instances resolve each other under `<name>.internal`.
    public var name: String
    /// The network's IPv4 subnet: its first address is the host's (the gateway), the rest are
    /// the guests'.
    public var subnet: IPv4Subnet
    /// Traffic to the outside is masqueraded (`--nat`); otherwise the network reaches only its instances
    /// and the host.
    public var nat: Bool = false
    /// The host bridge.
    public var bridge: String
    /// The driver whose machines join the network, with the daemon it lives on (`--connect`; nil is the
    /// driver's default), stored as the keys `driver` and `connect`.
    public var driver: DriverChoice = .qemu
    /// When the network was made.
    public var createdAt: Date = Date()
    /// The fleet file (`nimbus apply`) that made the network, whose `--prune` may delete it.
    public var fleet: String?

    /// A new network's spec, its bridge named after `name` (`nmb-NAME`, or `nmb-` and a hash of a
    /// long name).
    public init(name: String, subnet: IPv4Subnet, nat: Bool, driver: DriverChoice = .qemu) {
        self.name = name
        self.subnet = subnet
        self.nat = nat
        self.driver = driver
        self.bridge = Self.bridgeName(for: name)
    }

    enum CodingKeys: String, CodingKey { case version, name, subnet, nat, bridge, driver, connect, createdAt, fleet }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        version = try c.decode(Int.self, forKey: .version)
        name = try c.decode(String.self, forKey: .name)
        subnet = try c.decode(IPv4Subnet.self, forKey: .subnet)
        nat = try c.decode(Bool.self, forKey: .nat)
        bridge = try c.decode(String.self, forKey: .bridge)
        driver = try DriverChoice(
            name: c.decode(String.self, forKey: .driver), connect: c.decodeIfPresent(String.self, forKey: .connect),
            pool: nil)
        createdAt = try c.decode(Date.self, forKey: .createdAt)
        fleet = try c.decodeIfPresent(String.self, forKey: .fleet)
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(version, forKey: .version)
        try c.encode(name, forKey: .name)
        try c.encode(subnet, forKey: .subnet)
        try c.encode(nat, forKey: .nat)
        try c.encode(bridge, forKey: .bridge)
        try c.encode(driver.name, forKey: .driver)
        try c.encodeIfPresent(driver.connect, forKey: .connect)
        try c.encode(createdAt, forKey: .createdAt)
        try c.encodeIfPresent(fleet, forKey: .fleet)
    }

    /// `nmb-NAME`, or, for a name too long for Linux's 15-byte interface names, `nmb-` and a hash of it.
    static func bridgeName(for name: String) -> String {
        if name.count <= 11 { return "nmb-\(name)" }
        return "nmb-" + String(format: "%08x", fnv1a32(name))
    }

    /// Checks a network name: a DNS label (a-z, 0-9, '-', at most 63), as it becomes a domain.
    public static func checkName(_ name: String) throws(NimbusError) {
        let allowed = name.unicodeScalars.allSatisfy {
            ("a"..."z").contains($0) || ("0"..."9").contains($0) || $0 == "-"
        }
        guard !name.isEmpty, name.count <= 63, allowed, name.first != "-", name.last != "-" else {
            throw NimbusError(
                .invalidArgument,
                "network name \"\(name)\" is not a DNS label: use 1 to 63 of a-z, 0-9 and '-', '-' neither first nor last"
            )
        }
    }

    /// Refuses an address no guest can have on this network (outside the subnet, its network, broadcast or
    /// gateway address), naming the range.
    func checkGuestAddress(_ address: IPv4Address) throws(NimbusError) {
        guard !subnet.guestAddresses.contains(address.value) else { return }
        throw NimbusError(
            .invalidArgument,
            "--network \(name):\(address): the address is not one a guest can have in \(subnet) (\(IPv4Address(subnet.guestAddresses.lowerBound)) to \(IPv4Address(subnet.guestAddresses.upperBound)); \(subnet.gateway) is the host's)"
        )
    }

    /// The network as its driver makes it, in `folder`, with `hosts` on it.
    func definition(in folder: URL, hosts: [NetworkDefinition.Host]) -> NetworkDefinition {
        NetworkDefinition(name: name, bridge: bridge, subnet: subnet, nat: nat, folder: folder, hosts: hosts)
    }
}

/// `--network NAME[:ADDRESS]`: an instance's NIC on a network, stored in its instance.yaml with the address
/// and MAC it got at launch, which it keeps for life.
public struct NetworkAttachment: Codable, Sendable, Equatable {
    /// The network's name.
    public var network: String
    /// Nil until launch picks one (or the user's, checked).
    public var address: IPv4Address?
    /// Derived from the instance's and the network's names at launch.
    public var macAddress: String?
    /// The guest's default route goes through this network (`--default-route`), which must have NAT; the
    /// user-mode NIC then keeps only its own subnet (SSH and forwards).
    public var defaultRoute: Bool = false

    /// An attachment to `network`; launch fills in a nil `address` and `macAddress`.
    public init(network: String, address: IPv4Address? = nil, macAddress: String? = nil, defaultRoute: Bool = false) {
        self.network = network
        self.address = address
        self.macAddress = macAddress
        self.defaultRoute = defaultRoute
    }

    enum CodingKeys: String, CodingKey { case network, address, macAddress, defaultRoute }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        network = try c.decode(String.self, forKey: .network)
        address = try c.decodeIfPresent(IPv4Address.self, forKey: .address)
        macAddress = try c.decodeIfPresent(String.self, forKey: .macAddress)
        defaultRoute = try c.decodeIfPresent(Bool.self, forKey: .defaultRoute) ?? false
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(network, forKey: .network)
        try c.encodeIfPresent(address, forKey: .address)
        try c.encodeIfPresent(macAddress, forKey: .macAddress)
        if defaultRoute { try c.encode(true, forKey: .defaultRoute) }
    }

    /// Marks the attachment to `network` as the default route (`--default-route`, fleet `default-route`);
    /// `option` names the option for errors.
    public static func route(_ attachments: inout [NetworkAttachment], via network: String, option: String)
        throws(NimbusError)
    {
        guard let index = attachments.firstIndex(where: { $0.network == network }) else {
            throw NimbusError(
                .invalidArgument,
                "\(option) \(network): the instance is not on that network; add --network \(network) (made with --nat)")
        }
        attachments[index].defaultRoute = true
    }

    /// Parses `NAME` or `NAME:ADDRESS`; `what` names the option for errors.
    public init(parsing text: String, what: String = "--network") throws(NimbusError) {
        let parts = text.split(separator: ":", maxSplits: 1, omittingEmptySubsequences: false).map(String.init)
        try NetworkSpec.checkName(parts[0])
        network = parts[0]
        if parts.count == 2 {
            guard let address = IPv4Address(parts[1]) else {
                throw NimbusError(
                    .invalidArgument,
                    "\(what) \"\(text)\": \"\(parts[1])\" is not an IPv4 address; write NAME or NAME:ADDRESS, like n1:192.168.100.20"
                )
            }
            self.address = address
        }
    }

    /// A locally administered MAC, stable for an instance on a network (QEMU's 52:54:00 prefix with the
    /// last three bytes from a hash of both names).
    static func macAddress(instance: InstanceName, network: String) -> String {
        MachineConfig.derivedMAC("\(instance.rawValue)@\(network)")
    }
}
