import Foundation
import NimbusCore
import NimbusMachines

#if canImport(Glibc)
    import Glibc
#endif

/// What users do with networks (`nimbus network ...`), and what instances on them need: an address that
/// stays, a running network at every start, their address back at delete.
public struct NetworkManager: Sendable {
    /// The networks on disk, with their reservations.
    public let store: NetworkStore
    let drivers: any MachineDrivers
    let progress: @Sendable (String) -> Void

    /// A manager of the networks under `paths.networks`, made and run through `drivers`; `progress` gets
    /// messages for people, one line each.
    public init(
        paths: NimbusPaths, drivers: any MachineDrivers, progress: @escaping @Sendable (String) -> Void = { _ in }
    ) {
        self.store = NetworkStore(paths: paths)
        self.drivers = drivers
        self.progress = progress
    }

    /// The driver side of networks made by `choice`.
    func networks(for choice: DriverChoice) throws(NimbusError) -> any MachineNetworks {
        guard let networks = drivers.driver(for: choice, progress: progress).networks else {
            throw NimbusError(.unsupported, "the \(choice.name) driver cannot make networks: use --driver qemu")
        }
        return networks
    }

    /// The driver side of network `spec`.
    func networks(for spec: NetworkSpec) throws(NimbusError) -> any MachineNetworks {
        try networks(for: spec.driver)
    }

    // MARK: Commands

    /// Makes network `name` and brings it up. With no `subnet`, the first free /24 of 192.168.100.0 to
    /// 192.168.254.0, then of 10.100.0.0 to 10.199.0.0, that overlaps no address or route of the host and
    /// no other network. On any failure nothing is left: no folder, bridge or process.
    @discardableResult
    public func create(
        name: String, subnet: IPv4Subnet?, nat: Bool, driver: DriverChoice = .qemu, fleet: String? = nil
    ) async throws -> NetworkInfo {
        try NetworkSpec.checkName(name)
        let networks = try networks(for: driver)
        if let subnet { try Self.checkShape(subnet) }
        if let problem = await networks.createProblem() {
            throw NimbusError(.unsupported, "cannot create network \(name): \(problem)")
        }
        let spec = try await store.withLock { () async throws -> NetworkSpec in
            guard !store.exists(name) else {
                throw NimbusError(
                    .alreadyExists, "network \"\(name)\" exists already: `nimbus network info \(name)` shows it")
            }
            let others = store.names().compactMap { try? store.load($0) }
            var used = await networks.hostSubnets().map { ("this host's \($0)", $0) }
            used += others.map { ("network \($0.name)", $0.subnet) }
            used.append(("QEMU's user-mode network that every instance has", Self.userModeSubnet))
            let chosen: IPv4Subnet
            if let subnet {
                if let (holder, overlap) = used.first(where: { $0.1.overlaps(subnet) }) {
                    throw NimbusError(
                        .invalidArgument,
                        "--subnet \(subnet) overlaps \(holder)\(holder.hasSuffix(overlap.description) ? "" : " (\(overlap))"): choose another, or leave --subnet out and Nimbus picks a free one"
                    )
                }
                chosen = subnet
            } else {
                guard
                    let free = Self.candidates.first(where: { candidate in !used.contains { $0.1.overlaps(candidate) } }
                    )
                else {
                    throw NimbusError(.invalidState, "no free /24 is left for a network: give one with --subnet")
                }
                chosen = free
            }
            var spec = NetworkSpec(
                name: name, subnet: chosen, nat: nat, driver: try .init(kind: driver.kind, connect: driver.connect))
            spec.fleet = fleet
            if let clash = others.first(where: { $0.bridge == spec.bridge }) {
                throw NimbusError(
                    .alreadyExists, "network \(clash.name) has the bridge \(spec.bridge) already: choose another name")
            }
            try store.create(spec)
            return spec
        }
        do {
            try await networks.bringUp(store.definition(spec))
        } catch {
            try? await networks.tearDown(store.definition(spec))
            try? store.remove(name)
            throw error
        }
        return try await info(name)
    }

    /// Every network with its state and instances.
    public func list() async -> [NetworkInfo] {
        var infos: [NetworkInfo] = []
        for name in store.names() {
            if let info = try? await info(name) { infos.append(info) }
        }
        return infos
    }

    /// One network with its health and instances; fails with `.notFound` when it does not exist.
    public func info(_ name: String) async throws -> NetworkInfo {
        let spec = try store.load(name)
        let definition = store.definition(spec)
        let health = try await networks(for: spec).health(definition)
        return NetworkInfo(spec: spec, definition: definition, health: health, hosts: store.hosts(spec))
    }

    /// Brings the network's missing parts back (after a reboot, a killed dnsmasq).
    public func start(_ name: String) async throws {
        let spec = try store.load(name)
        try await networks(for: spec).bringUp(store.definition(spec))
    }

    /// Deletes a network no instance uses: its bridge, dnsmasq, NAT rules and folder.
    public func delete(_ name: String) async throws {
        try NetworkSpec.checkName(name)
        let networks = try networks(for: try store.load(name))
        if let problem = await networks.createProblem() {
            throw NimbusError(.unsupported, "cannot delete network \(name): \(problem)")
        }
        try await store.withLock { () async throws -> Void in
            let spec = try store.load(name)
            let hosts = store.hosts(spec)
            guard hosts.isEmpty else {
                throw NimbusError(
                    .invalidState,
                    "network \(name) is in use by \(hosts.map { "\($0.instance) (\($0.address))" }.joined(separator: ", ")): delete those instances first"
                )
            }
            try await networks.tearDown(store.definition(spec))
            try store.remove(name)
        }
    }

    /// Each network's health; with `fix`, brings back what is missing (a dead dnsmasq, a bridge gone with a
    /// reboot), which needs root.
    func doctor(fix: Bool) async -> [DoctorFinding] {
        var findings: [DoctorFinding] = []
        for name in store.names() {
            let subject = "network \(name)"
            guard let spec = try? store.load(name), let networks = try? networks(for: spec) else {
                findings.append(
                    DoctorFinding(
                        subject: subject, detail: "\(store.specFile(name).path) cannot be read", ok: false))
                continue
            }
            let definition = store.definition(spec)
            let problems = await networks.health(definition).problems(for: definition)
            guard !problems.isEmpty else {
                findings.append(
                    DoctorFinding(subject: subject, detail: "\(spec.subnet) on \(spec.bridge): active", ok: true))
                continue
            }
            var finding = DoctorFinding(subject: subject, detail: problems.joined(separator: ", "), ok: false)
            if fix {
                do {
                    try await networks.bringUp(definition)
                    finding.fixed = true
                    finding.detail += "; brought back"
                } catch {
                    finding.detail += "; not fixed: \(error.message)"
                }
            } else {
                finding.detail += ": `nimbus doctor --fix` or `nimbus network start \(name)` (as root)"
            }
            findings.append(finding)
        }
        return findings
    }

    // MARK: For instances

    /// Checks `--network` values before anything is made: each network exists, is for the instance's
    /// driver and on its host (a libvirt network lives on one daemon), and a pinned address fits its subnet.
    func check(_ attachments: [NetworkAttachment], driver: DriverChoice) throws(NimbusError) {
        var seen: Set<String> = []
        for attachment in attachments {
            guard seen.insert(attachment.network).inserted else {
                throw NimbusError(
                    .invalidArgument,
                    "--network \(attachment.network) is given twice: an instance has one NIC per network")
            }
            let spec = try store.load(attachment.network)
            guard spec.driver.kind == driver.kind else {
                throw NimbusError(
                    .invalidArgument,
                    "network \(spec.name) is for the \(spec.driver.name) driver and this instance uses \(driver.name): use --driver \(spec.driver.name)"
                )
            }
            let place = try networks(for: spec).place
            let instancePlace = try networks(for: driver).place
            guard place == instancePlace else {
                throw NimbusError(
                    .invalidArgument,
                    "network \(spec.name) lives on \(place) and this instance would run on \(instancePlace): instances on different hosts cannot share a network yet; use --connect \(place), or a network made there"
                )
            }
            if let address = attachment.address { try spec.checkGuestAddress(address) }
            if attachment.defaultRoute, !spec.nat {
                throw NimbusError(
                    .invalidArgument,
                    "--default-route \(spec.name): the network has no NAT, so nothing would leave it: route through a network made with --nat, or leave --default-route out"
                )
            }
        }
        if attachments.filter(\.defaultRoute).count > 1 {
            throw NimbusError(.invalidArgument, "--default-route is given twice: an instance has one default route")
        }
    }

    /// Gives `instance` an address and a MAC on each network; on failure none is kept. An entry of the same
    /// name that this user made for an instance `exists` denies is a leftover, and replaced.
    func reserve(
        _ attachments: [NetworkAttachment], for instance: InstanceName, exists: (InstanceName) -> Bool
    ) async throws(NimbusError) -> [NetworkAttachment] {
        var reserved: [NetworkAttachment] = []
        do {
            for attachment in attachments {
                let spec = try store.load(attachment.network)
                let mac = attachment.macAddress ?? NetworkAttachment.macAddress(instance: instance, network: spec.name)
                let address = try store.reserve(
                    spec, instance: instance, macAddress: mac, address: attachment.address,
                    isStale: { $0.owner == geteuid() && !exists(instance) })
                reserved.append(
                    NetworkAttachment(
                        network: spec.name, address: address, macAddress: mac, defaultRoute: attachment.defaultRoute))
            }
        } catch {
            await release(reserved, of: instance)
            throw error
        }
        return reserved
    }

    /// Gives the instance's addresses back and tells each network's DNS server.
    func release(_ attachments: [NetworkAttachment], of instance: InstanceName) async {
        for attachment in attachments {
            guard let spec = try? store.load(attachment.network), let address = attachment.address else { continue }
            guard store.hosts(spec).contains(where: { $0.address == address && $0.instance == instance.rawValue })
            else { continue }
            store.release(spec, address: address)
            await (try? networks(for: spec))?.hostsChanged(store.definition(spec))
        }
    }

    /// Makes sure each network the instance is on runs (bringing back what a reboot or a crash took, when
    /// this user may) and returns the NICs its machine gets, with what its guest is told.
    func prepare(_ attachments: [NetworkAttachment], of instance: InstanceName) async throws(NimbusError)
        -> [PreparedAttachment]
    {
        var prepared: [PreparedAttachment] = []
        for attachment in attachments {
            let spec = try store.load(attachment.network)
            let networks = try networks(for: spec)
            let definition = store.definition(spec)
            let health = await networks.health(definition)
            if !health.isHealthy(for: definition) {
                let problems = health.problems(for: definition).joined(separator: ", ")
                guard await networks.createProblem() == nil else {
                    throw NimbusError(
                        .invalidState,
                        "network \(spec.name) is not running (\(problems)): as root, `nimbus network start \(spec.name)`, then start \(instance) again"
                    )
                }
                progress("network \(spec.name): \(problems); bringing it back")
                try await networks.bringUp(definition)
            }
            if let problem = networks.attachProblem() {
                throw NimbusError(.unsupported, "\(instance) cannot join network \(spec.name): \(problem)")
            }
            guard let address = attachment.address, let mac = attachment.macAddress else {
                throw NimbusError(
                    .internalError, "\(instance)'s instance.yaml names network \(spec.name) without its address")
            }
            prepared.append(PreparedAttachment(spec: spec, address: address, macAddress: mac))
        }
        return prepared
    }

    static let userModeSubnet = IPv4Subnet(network: IPv4Address(0x0A00_0200), prefixLength: 24)

    /// The /24s tried in order when no subnet is given.
    static var candidates: [IPv4Subnet] {
        (100...254).map { IPv4Subnet(network: IPv4Address(0xC0A8_0000 | UInt32($0) << 8), prefixLength: 24) }
            + (100...199).map { IPv4Subnet(network: IPv4Address(0x0A00_0000 | UInt32($0) << 16), prefixLength: 24) }
    }

    /// A network's subnet must leave room for guests and be private.
    static func checkShape(_ subnet: IPv4Subnet) throws(NimbusError) {
        guard (8...29).contains(subnet.prefixLength) else {
            throw NimbusError(
                .invalidArgument, "--subnet \(subnet): use a prefix length from /8 to /29, like 192.168.100.0/24")
        }
        let privateRanges = ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"].compactMap {
            try? IPv4Subnet(parsing: $0, what: "")
        }
        guard privateRanges.contains(where: { $0.overlaps(subnet) && $0.prefixLength <= subnet.prefixLength }) else {
            throw NimbusError(
                .invalidArgument,
                "--subnet \(subnet) is not a private range (RFC 1918: 10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16): choose one inside them"
            )
        }
    }
}

/// An instance's NIC on a running network, with its network's facts for the guest's configuration.
struct PreparedAttachment: Sendable {
    var spec: NetworkSpec
    var address: IPv4Address
    var macAddress: String
}

/// A network as `nimbus network list/info` show it; its JSON keys are stable.
public struct NetworkInfo: Codable, Sendable {
    /// The network's name.
    public var name: String
    /// Its IPv4 subnet, like `192.168.100.0/24`.
    public var subnet: String
    /// The host's address on it (the bridge's): the subnet's first, `.1` in a /24.
    public var gateway: String
    /// The host bridge (`nmb-NAME`, or `nmb-` and a hash of a long name).
    public var bridge: String
    /// The DNS domain its instances resolve each other under, `NAME.internal`.
    public var domain: String
    /// True when traffic to the outside is masqueraded.
    public var nat: Bool
    /// `qemu` or `libvirt`.
    public var driver: String
    /// `active`, or `degraded` with `problems`.
    public var state: String
    /// What is missing (a bridge down, a dead dnsmasq, NAT rules gone), for people; empty when
    /// active.
    public var problems: [String]
    /// The instances with an address on it, by address.
    public var instances: [Host]

    /// An instance on the network.
    public struct Host: Codable, Sendable {
        /// The instance's name.
        public var name: String
        /// Its IPv4 address on the network.
        public var address: String
        /// Its NIC's MAC address; nil when the network has no DHCP entry for it.
        public var mac: String?
    }

    init(spec: NetworkSpec, definition: NetworkDefinition, health: NetworkHealth, hosts: [NetworkStore.Host]) {
        name = spec.name
        subnet = spec.subnet.description
        gateway = spec.subnet.gateway.description
        bridge = spec.bridge
        domain = definition.domain
        nat = spec.nat
        driver = spec.driver.name
        problems = health.problems(for: definition)
        state = problems.isEmpty ? "active" : "degraded"
        instances = hosts.map { Host(name: $0.instance, address: $0.address.description, mac: $0.macAddress) }
    }
}
