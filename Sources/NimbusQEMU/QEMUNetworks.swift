import Foundation
import NimbusCore
import NimbusMachines

#if canImport(Glibc)
    import Glibc
#endif

/// Host networks for QEMU machines, made of the host's own parts: a Linux bridge (`ip`), one dnsmasq per
/// network for DHCP reservations and DNS names, nftables for NAT, and qemu-bridge-helper, which plugs each
/// machine's tap into the bridge (so a user without root can start machines on a network root made, once
/// root has made the helper setuid, as Debian's QEMU documents).
///
/// dnsmasq is owned by the network's folder the way QEMU is by a machine's: its pidfile and config are
/// there, and `bringUp` starts it only when that pidfile names no live process. It reads the network's
/// hosts from two folders (`hostsdir`, `dhcp-hostsdir`), one file per instance, so a launch adds a name
/// without signalling a daemon another user may own.
public struct QEMUNetworks: MachineNetworks {
    /// Where qemu-bridge-helper reads which bridges it may plug taps into.
    let bridgeACL: URL
    /// The helper QEMU runs for `-netdev bridge` (Debian's path).
    static let bridgeHelper = "/usr/lib/qemu/qemu-bridge-helper"

    public init(bridgeACL: URL = URL(fileURLWithPath: "/etc/qemu/bridge.conf")) {
        self.bridgeACL = bridgeACL
    }

    public var place: String { "this host" }

    public func createProblem() -> String? {
        guard geteuid() == 0 else {
            return "making a network needs root (a bridge, its dnsmasq, and NAT rules): run it with sudo"
        }
        for (program, package) in [("ip", "iproute2"), ("dnsmasq", "dnsmasq-base"), ("nft", "nftables")]
        where ProgramRunner.find(program) == nil {
            return "\(program) is not installed: `apt-get install \(package)`"
        }
        return nil
    }

    /// Root always can plug a machine into a bridge; anyone else needs a setuid qemu-bridge-helper.
    public func attachProblem() -> String? {
        guard geteuid() != 0 else { return nil }
        var info = stat()
        guard stat(Self.bridgeHelper, &info) == 0 else {
            return "\(Self.bridgeHelper) is missing: `apt-get install qemu-system-x86`"
        }
        guard info.st_uid == 0, info.st_mode & S_ISUID != 0 else {
            return
                "\(Self.bridgeHelper) is not setuid root, so only root can plug machines into a bridge: as root, `dpkg-statoverride --update --add root root 4755 \(Self.bridgeHelper)`"
        }
        // The helper keeps only CAP_NET_ADMIN and becomes the user, who must be able to open the tun device
        // (udev makes it 0666 on a standard host; some containers leave it 0600).
        guard access("/dev/net/tun", R_OK | W_OK) == 0 else {
            return "/dev/net/tun is not open to this user (udev makes it 0666): as root, `chmod 0666 /dev/net/tun`"
        }
        return nil
    }

    public func bringUp(_ network: NetworkDefinition) async throws(NimbusError) {
        if let problem = createProblem() {
            throw NimbusError(.unsupported, "cannot bring up network \(network.name): \(problem)")
        }
        let health = await health(network)
        if !health.bridgeUp { try await makeBridge(network) }
        try allowBridge(network.bridge)
        if health.dnsPID == nil { try await startDNSMasq(network) }
        if network.nat, health.natActive != true { try await addNAT(network) }
    }

    public func tearDown(_ network: NetworkDefinition) async throws(NimbusError) {
        await endDNSMasq(network)
        unlink(Self.pidFile(network).path)
        if network.nat {
            _ = try? await ProgramRunner.output("nft", ["delete", "table", "ip", Self.natTable(network)])
        }
        if FileManager.default.fileExists(atPath: "/sys/class/net/\(network.bridge)") {
            try await ProgramRunner.run("ip", ["link", "delete", network.bridge, "type", "bridge"])
        }
        try disallowBridge(network.bridge)
    }

    public func health(_ network: NetworkDefinition) async -> NetworkHealth {
        var bridgeUp = false
        if let output = try? await ProgramRunner.output("ip", ["-j", "-4", "addr", "show", "dev", network.bridge]),
            output.status == 0,
            let links = try? JSONSerialization.jsonObject(with: Data(output.standardOutput.utf8)) as? [[String: Any]],
            let link = links.first
        {
            let flags = link["flags"] as? [String] ?? []
            let addresses = (link["addr_info"] as? [[String: Any]] ?? []).compactMap { $0["local"] as? String }
            bridgeUp = flags.contains("UP") && addresses.contains(network.subnet.gateway.description)
        }
        let pid = PIDFile(Self.pidFile(network).path).livePID.flatMap { isDNSMasq($0, of: network) ? $0 : nil }
        var natActive: Bool? = false
        if network.nat, geteuid() != 0 {
            // nft lists no table to a user ("Operation not permitted"): the user's launch onto root's NAT
            // network was refused as if the rules were missing. Root's `nimbus doctor` checks them.
            natActive = nil
        } else if network.nat,
            let output = try? await ProgramRunner.output("nft", ["list", "table", "ip", Self.natTable(network)])
        {
            natActive = output.status == 0
        }
        return NetworkHealth(bridgeUp: bridgeUp, dnsPID: pid, natActive: natActive)
    }

    /// dnsmasq reads new hosts from the folders by itself (inotify) but forgets removed ones only on SIGHUP.
    public func hostsChanged(_ network: NetworkDefinition) async {
        guard let pid = PIDFile(Self.pidFile(network).path).livePID, isDNSMasq(pid, of: network) else { return }
        kill(pid, SIGHUP)
    }

    public func hostSubnets() async -> [IPv4Subnet] { await HostAddresses.subnets() }

    // MARK: - The parts

    static func pidFile(_ network: NetworkDefinition) -> URL { network.folder.appending(path: "dnsmasq.pid") }
    static func configFile(_ network: NetworkDefinition) -> URL { network.folder.appending(path: "dnsmasq.conf") }
    static func logFile(_ network: NetworkDefinition) -> URL { network.folder.appending(path: "dnsmasq.log") }
    static func natTable(_ network: NetworkDefinition) -> String { "nimbus-\(network.name)" }

    /// Only a dnsmasq started with this network's config counts: a pid reused by another program does not.
    func isDNSMasq(_ pid: Int32, of network: NetworkDefinition) -> Bool {
        QEMUProcess(pid: pid).commandLine.contains(Self.dnsmasqMarker(network))
    }

    /// The argument that names a dnsmasq as this network's.
    static func dnsmasqMarker(_ network: NetworkDefinition) -> String { "--conf-file=\(configFile(network).path)" }

    func makeBridge(_ network: NetworkDefinition) async throws(NimbusError) {
        if !FileManager.default.fileExists(atPath: "/sys/class/net/\(network.bridge)") {
            try await ProgramRunner.run("ip", ["link", "add", "name", network.bridge, "type", "bridge"])
        }
        let gateway = "\(network.subnet.gateway)/\(network.subnet.prefixLength)"
        let present = try await ProgramRunner.output("ip", ["-4", "addr", "show", "dev", network.bridge])
        if !present.standardOutput.contains(" \(gateway) ") {
            try await ProgramRunner.run("ip", ["addr", "add", gateway, "dev", network.bridge])
        }
        try await ProgramRunner.run("ip", ["link", "set", network.bridge, "up"])
    }

    /// dnsmasq's configuration: DNS for the network's names (bare and under `<name>.internal`, never sent
    /// upstream), other names forwarded to the host's resolvers, DHCP for reserved MACs only, no default
    /// route unless the network has NAT, no lease file (every address is a reservation).
    static func dnsmasqConfig(_ network: NetworkDefinition) -> String {
        let subnet = network.subnet
        var lines = [
            "# dnsmasq for Nimbus network \(network.name); written by nimbus, rewritten at each start",
            "pid-file=\(pidFile(network).path)",
            "log-facility=\(logFile(network).path)",
            "interface=\(network.bridge)",
            "except-interface=lo",
            "bind-interfaces",
            "listen-address=\(subnet.gateway)",
            "strict-order",
            "no-hosts",
            "domain-needed",
            "bogus-priv",
            "domain=\(network.domain)",
            "local=/\(network.domain)/",
            "expand-hosts",
            "hostsdir=\(network.hostsFolder.path)",
            "dhcp-hostsdir=\(network.dhcpFolder.path)",
            "dhcp-range=\(subnet.network),static,\(subnet.netmask)",
            "dhcp-authoritative",
            "dhcp-no-override",
            "leasefile-ro",
            "dhcp-option=option:dns-server,\(subnet.gateway)",
            "dhcp-option=option:domain-search,\(network.domain)",
        ]
        lines.append(network.nat ? "dhcp-option=option:router,\(subnet.gateway)" : "dhcp-option=option:router")
        return lines.joined(separator: "\n") + "\n"
    }

    /// Every live process started with this network's config: the daemon, and any child it forked to answer
    /// a query over TCP, which outlives a killed daemon holding its listening sockets (port 53 in use).
    func dnsmasqProcesses(_ network: NetworkDefinition) -> [QEMUProcess] {
        ((try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []).compactMap { entry in
            guard let pid = Int32(entry), isDNSMasq(pid, of: network) else { return nil }
            let process = QEMUProcess(pid: pid)
            return process.isAlive ? process : nil
        }
    }

    /// Ends the network's dnsmasq processes: SIGTERM, then SIGKILL for any left after a second.
    func endDNSMasq(_ network: NetworkDefinition) async {
        for process in dnsmasqProcesses(network) {
            process.signal(SIGTERM)
            if await !process.waitForExit(timeout: .seconds(1)) {
                process.signal(SIGKILL)
                _ = await process.waitForExit(timeout: .seconds(1))
            }
        }
    }

    func startDNSMasq(_ network: NetworkDefinition) async throws(NimbusError) {
        // What a killed daemon left (its TCP children) would keep the new one from binding.
        await endDNSMasq(network)
        try AtomicFile.write(Data(Self.dnsmasqConfig(network).utf8), to: Self.configFile(network))
        unlink(Self.pidFile(network).path)
        // dnsmasq reports its start-up errors (an address in use) through its exit status, then detaches. A
        // daemon killed a moment ago may hold its sockets a little longer (a process stuck in the kernel
        // under heavy I/O is not gone yet when SIGKILL returns): an address in use is tried again for a few
        // seconds before it is taken for another server's.
        var attempt = 0
        while true {
            let output = try await ProgramRunner.output("dnsmasq", ["--conf-file=\(Self.configFile(network).path)"])
            if output.status == 0 { break }
            let reason = output.standardError.trimmingCharacters(in: .whitespacesAndNewlines)
            let inUse = reason.contains("Address already in use")
            attempt += 1
            if inUse, attempt < 5 {
                await endDNSMasq(network)
                try? await Task.sleep(for: .seconds(1))
                continue
            }
            let hint =
                inUse
                ? ": another DNS server holds port 53 on \(network.subnet.gateway) (one bound to all addresses, or to this one\(await Self.port53Holders())): stop it, or make it listen on its own interfaces only (dnsmasq: bind-interfaces), then try again"
                : ""
            throw NimbusError(
                .processFailed, "dnsmasq for network \(network.name) did not start: \(reason)\(hint)")
        }
        for _ in 0..<100 {
            if PIDFile(Self.pidFile(network).path).livePID != nil { return }
            try? await Task.sleep(for: .milliseconds(20))
        }
        throw NimbusError(
            .processFailed,
            "dnsmasq for network \(network.name) started but wrote no pidfile; see \(Self.logFile(network).path)")
    }

    /// The processes listening on port 53, as `ss` names them (", held by ..."), or nothing.
    static func port53Holders() async -> String {
        guard let output = try? await ProgramRunner.output("ss", ["-H", "-lntup", "sport = :53"]), output.status == 0
        else { return "" }
        let holders = Set(
            output.standardOutput.matches(of: #/users:\(\("([^"]+)",pid=(\d+)/#).map { "\($0.1) \($0.2)" })
        return holders.isEmpty ? "" : "; port 53 is held by " + holders.sorted().joined(separator: ", ")
    }

    /// Masquerades the subnet's traffic to the outside, lets it through the forward hook, and keeps other
    /// Nimbus networks out of it, in a table of its own that `tearDown` deletes whole.
    func addNAT(_ network: NetworkDefinition) async throws(NimbusError) {
        let subnet = network.subnet.description
        let bridge = network.bridge
        let rules = """
            table ip \(Self.natTable(network)) {
                chain postrouting {
                    type nat hook postrouting priority srcnat; policy accept;
                    ip saddr \(subnet) ip daddr != \(subnet) masquerade
                }
                chain forward {
                    type filter hook forward priority filter; policy accept;
                    iifname "\(bridge)" oifname "nmb-*" drop
                    oifname "\(bridge)" iifname "nmb-*" drop
                    iifname "\(bridge)" accept
                    oifname "\(bridge)" ct state established,related accept
                    oifname "\(bridge)" drop
                }
            }
            """
        try await ProgramRunner.run("nft", ["-f", "-"], input: rules)
        // Routing between interfaces, which NAT needs; the forward chain above keeps it to this network.
        guard let forwarding = FileHandle(forWritingAtPath: "/proc/sys/net/ipv4/ip_forward") else {
            throw NimbusError(
                .io, "could not turn on IPv4 forwarding (/proc/sys/net/ipv4/ip_forward) for \(network.name)")
        }
        forwarding.write(Data("1\n".utf8))
        try? forwarding.close()
    }

    /// Adds `allow BRIDGE` to qemu-bridge-helper's ACL, creating the file as Debian leaves none.
    func allowBridge(_ bridge: String) throws(NimbusError) {
        var lines = aclLines()
        guard !lines.contains("allow \(bridge)") else { return }
        lines.append("allow \(bridge)")
        try writeACL(lines)
    }

    func disallowBridge(_ bridge: String) throws(NimbusError) {
        let lines = aclLines()
        guard lines.contains("allow \(bridge)") else { return }
        try writeACL(lines.filter { $0 != "allow \(bridge)" })
    }

    private func aclLines() -> [String] {
        ((try? String(contentsOf: bridgeACL, encoding: .utf8)) ?? "").split(separator: "\n").map(String.init)
    }

    private func writeACL(_ lines: [String]) throws(NimbusError) {
        do {
            try FileManager.default.createDirectory(
                at: bridgeACL.deletingLastPathComponent(), withIntermediateDirectories: true)
        } catch {
            throw NimbusError(.io, "could not create \(bridgeACL.deletingLastPathComponent().path)", cause: error)
        }
        try AtomicFile.write(Data((lines.joined(separator: "\n") + "\n").utf8), to: bridgeACL)
    }
}
