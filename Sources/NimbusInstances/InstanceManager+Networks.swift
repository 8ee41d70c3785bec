import Foundation
import NimbusCore
import NimbusMachines
import NimbusSeed

/// An instance's NICs on host networks: what its guest is told, what its machine gets.
extension InstanceManager {
    /// Adds a NIC per network to the guest's configuration: matched by MAC, the fixed address, no default
    /// route (the user-mode NIC keeps it) unless it was asked for, the network's DNS server and domain. cloud-init guests whose
    /// resolv.conf is a plain file (Debian's ifupdown without resolvconf, where network-config's DNS is not
    /// applied) get it written at each boot, and dhclient is kept from rewriting it; Ignition guests
    /// (`cloudInit` false) resolve through their network stack's per-link DNS.
    func addNetworks(_ attachments: [NetworkAttachment], to config: inout InstanceConfig, cloudInit: Bool = true)
        throws(NimbusError)
    {
        guard !attachments.isEmpty else { return }
        // Not yet for Ignition: in CI the CoreOS guest routed this way never ran its runcmd unit (session 9).
        if !cloudInit, let routed = attachments.first(where: \.defaultRoute) {
            throw NimbusError(
                .unsupported,
                "--default-route \(routed.network) is not supported for Ignition (CoreOS) images yet: leave it out; the guest then goes out through its user-mode NIC"
            )
        }
        var servers: [String] = []
        var domains: [String] = []
        for attachment in attachments {
            let spec = try networks.store.load(attachment.network)
            guard let address = attachment.address, let mac = attachment.macAddress else { continue }
            let domain = networks.store.definition(spec).domain
            config.network.interfaces.append(
                InstanceConfig.Network.Interface(
                    macAddress: mac, dhcp4: false, addresses: ["\(address)/\(spec.subnet.prefixLength)"],
                    gateway4: attachment.defaultRoute ? spec.subnet.gateway.description : nil,
                    nameservers: [spec.subnet.gateway.description], searchDomains: [domain]))
            // The default route through the network: the user-mode NIC (first) is given QEMU's fixed address
            // without a gateway, as a DHCP lease's route would win over the network's on every image family.
            if attachment.defaultRoute, !config.network.interfaces.isEmpty {
                config.network.interfaces[0].dhcp4 = false
                config.network.interfaces[0].addresses = ["10.0.2.15/24"]
                config.network.interfaces[0].nameservers = ["10.0.2.3"]
            }
            servers.append(spec.subnet.gateway.description)
            domains.append(domain)
        }
        guard cloudInit else { return }
        config.bootcmd.append(
            .arguments(["sh", "-c", Self.resolverScript, "nimbus-resolver", domains.joined(separator: " ")] + servers))
    }

    /// Puts the networks' DNS servers first in a plain-file /etc/resolv.conf (a symlink means a resolver
    /// daemon that network-config already told), keeping the other servers, and stops dhclient's hook from
    /// replacing the file. Arguments: the search domains (one word), then the servers.
    static let resolverScript = """
        [ -L /etc/resolv.conf ] && exit 0
        domains=$1; shift
        mkdir -p /etc/dhcp/dhclient-enter-hooks.d
        printf '%s\\n' '# Nimbus: /etc/resolv.conf lists the instance networks DNS servers' 'make_resolv_conf() { :; }' \\
          > /etc/dhcp/dhclient-enter-hooks.d/nimbus-networks
        { echo "search $domains"
          for server in "$@"; do echo "nameserver $server"; done
          grep -v -e '^search ' -e '^domain ' /etc/resolv.conf 2>/dev/null
        } | awk '!seen[$0]++' > /etc/resolv.conf.nimbus && mv /etc/resolv.conf.nimbus /etc/resolv.conf
        """

    /// The machine's NICs on the instance's networks, once each network runs.
    func machineAttachments(_ spec: InstanceSpec) async throws(NimbusError) -> [MachineConfig.Network.Attachment] {
        try await networks.prepare(spec.networks, of: spec.name).map {
            MachineConfig.Network.Attachment(network: $0.spec.name, bridge: $0.spec.bridge, macAddress: $0.macAddress)
        }
    }
}
