import CLibvirt
import Foundation
import NimbusCore
import NimbusMachines

#if canImport(Glibc)
    import Glibc
#endif

/// Host networks for libvirt machines: a libvirt network per Nimbus network (`nimbus-NAME`), on the daemon
/// the machines run on, so on a remote host the network lives there. libvirt makes the bridge, runs the
/// network's dnsmasq and its firewall rules (isolated, or NAT with `<forward mode='nat'/>`); Nimbus tells it
/// of every instance with `virNetworkUpdate`, as a DHCP reservation (`<dhcp><host mac name ip/>`) and a DNS
/// name (`<dns><host ip><hostname/>`), which the network's domain makes `NAME.<network>.internal` too.
///
/// A dnsmasq found dead is restarted through libvirt (`restartDNSMasq`), so libvirt keeps knowing its pid.
public struct LibvirtNetworks: MachineNetworks {
    public let uri: String

    public init(uri: String) { self.uri = uri }

    public var place: String { uri }

    /// The libvirt network of Nimbus network `name`.
    public static func libvirtName(_ name: String) -> String { "nimbus-\(name)" }

    public func createProblem() async -> String? {
        await LibvirtExecutor.answer(uri) { () -> String? in
            do throws(NimbusError) {
                _ = try LibvirtConnection(uri: uri)
                return nil
            } catch {
                return error.message
            }
        }
    }

    /// libvirtd plugs the machine's tap into the bridge itself.
    public func attachProblem() -> String? { nil }

    public func bringUp(_ network: NetworkDefinition) async throws(NimbusError) {
        try await LibvirtExecutor.run(uri) { () throws(NimbusError) in
            let connection = try LibvirtConnection(uri: uri)
            let name = Self.libvirtName(network.name)
            if let existing = try connection.network(named: name) {
                if existing.isActive {
                    if dnsmasqRunning(network) == false { try restartDNSMasq(network, on: existing) }
                    try sync(network, on: existing)
                    return
                }
                // A stopped network (a host reboot without autostart) is defined again from what Nimbus knows.
                try existing.call("undefine", "virNetworkUndefine") { libvirt.virNetworkUndefine($0) }
            }
            let defined = try connection.defineNetwork(Self.xml(network))
            try defined.call("mark autostart", "virNetworkSetAutostart") { libvirt.virNetworkSetAutostart($0, 1) }
            try defined.call("start", "virNetworkCreate") { libvirt.virNetworkCreate($0) }
        }
    }

    public func tearDown(_ network: NetworkDefinition) async throws(NimbusError) {
        try await LibvirtExecutor.run(uri) { () throws(NimbusError) in
            let connection = try LibvirtConnection(uri: uri)
            guard let existing = try connection.network(named: Self.libvirtName(network.name)) else { return }
            if existing.isActive {
                try existing.call("stop", "virNetworkDestroy") { libvirt.virNetworkDestroy($0) }
            }
            try existing.call("undefine", "virNetworkUndefine") { libvirt.virNetworkUndefine($0) }
        }
    }

    public func health(_ network: NetworkDefinition) async -> NetworkHealth {
        return await LibvirtExecutor.answer(uri) { () -> NetworkHealth in
            guard let connection = try? LibvirtConnection(uri: uri),
                let existing = try? connection.network(named: Self.libvirtName(network.name)), existing.isActive,
                let xml = existing.xml()
            else {
                return NetworkHealth(bridgeUp: false, dnsPID: nil, natActive: false)
            }
            let known = Self.hosts(inXML: xml)
            let unknown = network.hosts.filter { !known.contains($0) }.map(\.name)
            let pid = localDNSMasqPID(network)
            return NetworkHealth(
                bridgeUp: true, dnsPID: pid, natActive: network.nat, unknownHosts: unknown,
                dnsRunning: dnsmasqRunning(network) ?? true)
        }
    }

    public func hostsChanged(_ network: NetworkDefinition) async {
        await LibvirtExecutor.answer(uri) {
            guard let connection = try? LibvirtConnection(uri: uri),
                let existing = try? connection.network(named: Self.libvirtName(network.name))
            else { return }
            _ = try? sync(network, on: existing)
        }
    }

    /// This host's addresses and routes when the daemon is local, and every libvirt network's subnet on the
    /// daemon's host (active or not), which a new network must not overlap either.
    public func hostSubnets() async -> [IPv4Subnet] {
        return await LibvirtExecutor.answer(uri) { () -> [IPv4Subnet] in
            var subnets = LibvirtDriver.isLocal(uri) ? await HostAddresses.subnets() : []
            if let connection = try? LibvirtConnection(uri: uri) {
                for network in (try? connection.allNetworks()) ?? [] {
                    subnets += Self.subnets(inXML: network.xml() ?? "")
                }
            }
            return subnets
        }
    }

    // MARK: - Hosts

    /// Makes the network's DHCP and DNS hosts `network.hosts`: adds the missing, deletes the others (in the
    /// live network and its definition).
    func sync(_ network: NetworkDefinition, on existing: LibvirtNetwork) throws(NimbusError) {
        let current = Self.hosts(inXML: existing.xml() ?? "")
        let wanted = Set(network.hosts)
        for host in current where !wanted.contains(host) {
            try update(existing, VIR_NETWORK_UPDATE_COMMAND_DELETE, host)
        }
        for host in network.hosts where !current.contains(host) {
            try update(existing, VIR_NETWORK_UPDATE_COMMAND_ADD_LAST, host)
        }
    }

    /// Adds or deletes `host`'s DNS name and DHCP reservation. Another nimbus may be doing the same at once
    /// (a fleet's instances start in parallel): a change libvirt refuses because it is already made counts
    /// as made.
    private func update(
        _ existing: LibvirtNetwork, _ command: virNetworkUpdateCommand, _ host: NetworkDefinition.Host
    ) throws(NimbusError) {
        let flags = UInt32(VIR_NETWORK_UPDATE_AFFECT_LIVE.rawValue | VIR_NETWORK_UPDATE_AFFECT_CONFIG.rawValue)
        let adding = command == VIR_NETWORK_UPDATE_COMMAND_ADD_LAST
        let parts: [(section: virNetworkUpdateSection, xml: String, isIn: (String) -> Bool)] = [
            (
                VIR_NETWORK_SECTION_DNS_HOST, Self.dnsHostXML(host),
                { Self.dnsNames(inXML: $0).contains(Self.dnsName(host)) }
            ),
            (VIR_NETWORK_SECTION_IP_DHCP_HOST, Self.dhcpHostXML(host), { Self.dhcpHosts(inXML: $0).contains(host) }),
        ]
        for part in parts {
            guard
                libvirt.virNetworkUpdate(existing.pointer, command.rawValue, part.section.rawValue, -1, part.xml, flags)
                    != 0
            else { continue }
            let error = LibvirtError.last("virNetworkUpdate")
            if let xml = existing.xml(), part.isIn(xml) == adding { continue }
            throw NimbusError(
                .processFailed,
                "libvirt could not \(adding ? "add" : "remove") \(host.name) (\(host.address)) \(adding ? "to" : "from") network \(existing.name): \(error.message)",
                cause: error)
        }
    }

    // MARK: - dnsmasq

    /// Whether the daemon is this host's system libvirtd, whose files under /run this process can read.
    var isLocalSystem: Bool { LibvirtDriver.isLocal(uri) && (uri.hasSuffix("/system") || uri.contains("/system?")) }

    /// The network's dnsmasq pid from libvirt's pidfile, for a local system daemon; nil otherwise.
    func localDNSMasqPID(_ network: NetworkDefinition) -> Int32? {
        guard isLocalSystem else { return nil }
        return PIDFile("/run/libvirt/network/\(Self.libvirtName(network.name)).pid").livePID
    }

    /// Whether the network's dnsmasq runs, where this process can see it (a local system daemon's); nil
    /// when it cannot tell.
    func dnsmasqRunning(_ network: NetworkDefinition) -> Bool? {
        isLocalSystem ? localDNSMasqPID(network) != nil : nil
    }

    /// Has libvirt restart the network's dnsmasq, which it does whenever a DNS TXT record is added or
    /// deleted: a record `nimbus-restart` is added when absent, deleted when present. A DHCP or DNS host
    /// change would only signal the dead daemon's pid, and libvirt, which checks it with kill(pid, 0), takes a
    /// zombie for alive where no init reaps the daemonised dnsmasq (containers): there nothing else starts it.
    private func restartDNSMasq(_ network: NetworkDefinition, on existing: LibvirtNetwork) throws(NimbusError) {
        let record = "<txt name='nimbus-restart' value='1'/>"
        let present = existing.xml()?.contains("<txt name='nimbus-restart'") ?? false
        let command = present ? VIR_NETWORK_UPDATE_COMMAND_DELETE : VIR_NETWORK_UPDATE_COMMAND_ADD_LAST
        let flags = UInt32(VIR_NETWORK_UPDATE_AFFECT_LIVE.rawValue | VIR_NETWORK_UPDATE_AFFECT_CONFIG.rawValue)
        try existing.call("restart the dnsmasq of", "virNetworkUpdate") {
            libvirt.virNetworkUpdate($0, command.rawValue, VIR_NETWORK_SECTION_DNS_TXT.rawValue, -1, record, flags)
        }
    }

    // MARK: - XML

    /// The network's definition: its bridge with the gateway address, DHCP reservations only (no range),
    /// DNS names under its domain answered locally, and NAT to the outside only with `nat` (without
    /// `<forward>` libvirt isolates the network: nothing routed in or out).
    static func xml(_ network: NetworkDefinition) -> String {
        let escape = LibvirtDomainXML.escape
        var lines = [
            "<network>",
            "  <name>\(escape(libvirtName(network.name)))</name>",
        ]
        if network.nat { lines.append("  <forward mode='nat'/>") }
        lines += [
            "  <bridge name='\(escape(network.bridge))' stp='off' delay='0'/>",
            "  <domain name='\(escape(network.domain))' localOnly='yes'/>",
            "  <dns>",
        ]
        lines += network.hosts.map { "    " + dnsHostXML($0) }
        lines += [
            "  </dns>",
            "  <ip address='\(network.subnet.gateway)' netmask='\(network.subnet.netmask)'>",
            "    <dhcp>",
        ]
        lines += network.hosts.map { "      " + dhcpHostXML($0) }
        lines += ["    </dhcp>", "  </ip>", "</network>"]
        return lines.joined(separator: "\n") + "\n"
    }

    static func dnsHostXML(_ host: NetworkDefinition.Host) -> String {
        "<host ip='\(host.address)'><hostname>\(LibvirtDomainXML.escape(host.name))</hostname></host>"
    }

    static func dhcpHostXML(_ host: NetworkDefinition.Host) -> String {
        "<host mac='\(host.macAddress)' name='\(LibvirtDomainXML.escape(host.name))' ip='\(host.address)'/>"
    }

    /// The hosts a network's XML (as libvirt writes it) both reserves an address for and names: a DHCP host
    /// whose address has a DNS name of the same host name.
    static func hosts(inXML xml: String) -> [NetworkDefinition.Host] {
        let named = dnsNames(inXML: xml)
        return dhcpHosts(inXML: xml).filter { named.contains(dnsName($0)) }
    }

    /// The DHCP reservations of a network's XML.
    static func dhcpHosts(inXML xml: String) -> [NetworkDefinition.Host] {
        xml.matches(of: #/<host mac='([^']+)' name='([^']+)' ip='([^']+)'\/>/#).compactMap { match in
            guard let address = IPv4Address(String(match.3)) else { return nil }
            return NetworkDefinition.Host(
                name: LibvirtDomainXML.unescape(String(match.2)), address: address,
                macAddress: String(match.1).lowercased())
        }
    }

    /// The DNS names of a network's XML, each as `dnsName` spells a host's.
    static func dnsNames(inXML xml: String) -> Set<String> {
        Set(
            xml.matches(of: #/<host ip='([^']+)'>\s*<hostname>([^<]+)<\/hostname>/#).map {
                "\($0.1) \(LibvirtDomainXML.unescape(String($0.2)))"
            })
    }

    /// A host's DNS entry: its address and name.
    static func dnsName(_ host: NetworkDefinition.Host) -> String { "\(host.address) \(host.name)" }

    /// The subnets of a network's `<ip>` elements (with `prefix` or `netmask`).
    static func subnets(inXML xml: String) -> [IPv4Subnet] {
        xml.matches(of: #/<ip\b[^>]*>/#).compactMap { match -> IPv4Subnet? in
            let element = String(match.0)
            guard let address = element.firstMatch(of: #/address='([0-9.]+)'/#).flatMap({ IPv4Address(String($0.1)) })
            else { return nil }
            if let prefix = element.firstMatch(of: #/prefix='([0-9]+)'/#).flatMap({ Int($0.1) }),
                (1...32).contains(prefix)
            {
                return IPv4Subnet(containing: address, prefixLength: prefix)
            }
            if let mask = element.firstMatch(of: #/netmask='([0-9.]+)'/#).flatMap({ IPv4Address(String($0.1)) }) {
                return IPv4Subnet(containing: address, prefixLength: mask.value.nonzeroBitCount)
            }
            return nil
        }
    }
}

extension LibvirtConnection {
    /// The network named `name`, nil when there is none.
    func network(named name: String) throws(NimbusError) -> LibvirtNetwork? {
        guard let pointer = libvirt.virNetworkLookupByName(self.pointer, name) else {
            let error = LibvirtError.last("virNetworkLookupByName")
            if error.matches(VIR_ERR_NO_NETWORK) { return nil }
            throw NimbusError(
                .network, "libvirt at \(uri) could not look up network \(name): \(error.message)", cause: error)
        }
        return LibvirtNetwork(pointer, name: name)
    }

    /// Defines a persistent network from `xml`.
    func defineNetwork(_ xml: String) throws(NimbusError) -> LibvirtNetwork {
        guard let pointer = libvirt.virNetworkDefineXML(self.pointer, xml) else {
            let error = LibvirtError.last("virNetworkDefineXML")
            throw NimbusError(
                .processFailed, "libvirt at \(uri) could not define the network: \(error.message)", cause: error)
        }
        let name = libvirt.virNetworkGetName(pointer).map { String(cString: $0) } ?? ""
        return LibvirtNetwork(pointer, name: name)
    }

    /// Every network of the daemon, active or not.
    func allNetworks() throws(NimbusError) -> [LibvirtNetwork] {
        var list: UnsafeMutablePointer<virNetworkPtr?>?
        let count = libvirt.virConnectListAllNetworks(pointer, &list, 0)
        guard count >= 0, let list else {
            let error = LibvirtError.last("virConnectListAllNetworks")
            throw NimbusError(.network, "libvirt at \(uri) could not list its networks: \(error.message)", cause: error)
        }
        defer { free(list) }
        return (0..<Int(count)).compactMap { index in
            guard let network = list[index] else { return nil }
            return LibvirtNetwork(network, name: libvirt.virNetworkGetName(network).map { String(cString: $0) } ?? "")
        }
    }
}

/// A network handle (`virNetworkPtr`), freed when released. `@unchecked Sendable` as `LibvirtDomain`.
final class LibvirtNetwork: @unchecked Sendable {
    let pointer: virNetworkPtr
    let name: String

    init(_ pointer: virNetworkPtr, name: String) {
        self.pointer = pointer
        self.name = name
    }

    deinit { _ = libvirt.virNetworkFree(pointer) }

    var isActive: Bool {
        let active = libvirt.virNetworkIsActive(pointer)
        if active < 0 { libvirt.virResetLastError() }
        return active == 1
    }

    /// The live XML (the definition when inactive).
    func xml() -> String? {
        guard let text = libvirt.virNetworkGetXMLDesc(pointer, 0) else {
            libvirt.virResetLastError()
            return nil
        }
        defer { free(text) }
        return String(cString: text)
    }

    /// Runs a libvirt call that returns 0 on success, turning failure into a NimbusError about `action`.
    func call(_ action: String, _ function: String, _ body: (virNetworkPtr) -> Int32) throws(NimbusError) {
        guard body(pointer) == 0 else {
            let error = LibvirtError.last(function)
            throw NimbusError(
                .processFailed, "libvirt could not \(action) network \(name): \(error.message)", cause: error)
        }
    }
}
