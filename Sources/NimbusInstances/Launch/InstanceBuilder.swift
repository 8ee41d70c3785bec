import Foundation
import NimbusCore
import NimbusDisks
import NimbusImages
import NimbusMachines
import NimbusSeed

/// Fills a new instance's folder: the overlay on its image, the pinned SSH host key, and the guest's
/// personality (hostname, user, keys, mounts, NICs) as a NoCloud seed (an ISO, or a folder served over
/// HTTP) or an Ignition config. What the folder holds before its first start, and nothing else.
struct InstanceBuilder: Sendable {
    /// The networks an instance joins, for their subnets and domains.
    let networks: NetworkStore
    /// The volumes an instance mounts, for their serials and labels.
    let volumes: VolumeStore
    /// Messages for people, one line each.
    let progress: @Sendable (String) -> Void

    /// Fills a new instance's folder: the overlay, the seed or Ignition config, known_hosts and the host key, the
    /// state. With `root`, fills only what a new root disk needs for an instance that has its host key already
    /// (`upgrade`): the overlay and the seed, whose instance-id differs by the root's generation.
    func build(
        _ spec: InstanceSpec, image: CachedImage, userKey: SSHKeyPair, userData: UserData?,
        userIgnition: UserIgnition? = nil, in dir: InstanceDirectory,
        root: (hostKey: SSHKeyPair, generation: Int)? = nil
    ) async throws -> InstanceState {
        try await DiskImage.createOverlay(at: dir.disk, backedBy: image.url, size: spec.disk.bytes)

        let hostKey = root?.hostKey ?? SSHKeyPair(comment: "\(spec.name) host key")
        if root == nil {
            try Self.pin(hostKey, of: spec.name, in: dir)
            try AtomicFile.write(Data(hostKey.openSSHPrivateKey.utf8), to: dir.hostKey, permissions: 0o600)
        }

        var state = InstanceState()
        state.imageDigest = image.sha256
        state.imageDescription = Self.describe(image)
        state.sshUser = image.distribution == .fedoraCoreOS ? "core" : InstanceManager.defaultUser
        state.seedInstanceID = try writeConfiguration(
            spec, ignition: image.distribution == .fedoraCoreOS, user: state.sshUser, userKey: userKey,
            userData: userData, userIgnition: userIgnition, hostKey: hostKey, generation: root?.generation ?? 0,
            in: dir)
        // The ephemeral disk is not made here: startMachine makes it anew before every start, the first too.
        return state
    }

    /// Writes what configures the guest into `dir`: the NoCloud seed (`seed.iso`, or the folder `SeedServer`
    /// serves for `--seed http`) or, for a CoreOS image (`ignition`), the Ignition config. Returns the seed's
    /// instance-id, nil for Ignition. `generation` and `salt` are part of the instance-id (`NoCloudSeed`).
    func writeConfiguration(
        _ spec: InstanceSpec, ignition: Bool, user: String, userKey: SSHKeyPair, userData: UserData?,
        userIgnition: UserIgnition? = nil, hostKey: SSHKeyPair, generation: Int, salt: String? = nil,
        in dir: InstanceDirectory
    ) throws -> String? {
        var personality = personality(
            spec, userKeys: [userKey.publicKeyLine] + spec.sshAuthorizedKeys, hostKey: hostKey, user: user)
        try addNetworks(spec.networks, to: &personality, cloudInit: !ignition)
        try addVolumes(spec.volumes, to: &personality)
        do {
            if ignition {
                let config = try IgnitionConfig(config: personality, userData: userData, userConfig: userIgnition)
                progress("\(spec.name): Ignition spec \(config.specVersion): \(config.versionReason)")
                try AtomicFile.write(Data(config.json.utf8), to: dir.ignition, permissions: 0o600)
                return nil
            }
            let seed = try NoCloudSeed(
                config: personality, name: spec.name.rawValue, userData: userData, generation: generation, salt: salt)
            switch spec.seedTransport {
            case .http: try writeSeedFolder(seed, in: dir)  // served by SeedServer at each start; no seed.iso
            case .iso: try seed.writeISO(to: dir.seed, timestamp: Date(), private: true)
            case .configDrive: try seed.writeISO(to: dir.seed, timestamp: Date(), private: true, volume: .configDrive)
            case .ovf: try seed.writeISO(to: dir.seed, timestamp: Date(), private: true, volume: .ovf)
            }
            return seed.instanceID
        } catch let error as SeedError {
            throw error.nimbusError
        }
    }

    /// The instance's personality: hostname, locale, timezone, the default user with its keys, the pinned
    /// host key, and the mounts (shared folders and the ephemeral disk).
    func personality(_ spec: InstanceSpec, userKeys: [String], hostKey: SSHKeyPair, user: String) -> InstanceConfig {
        var config = InstanceConfig()
        config.hostname = spec.effectiveHostname
        config.locale = spec.locale
        config.timezone = spec.timezone
        config.defaultUser = InstanceConfig.User(name: user, sshAuthorizedKeys: userKeys)
        config.hostKeys = InstanceConfig.HostKeys(ed25519: hostKey)
        // Matched by the MAC QEMU gives the NIC: renderers such as Debian's ifupdown (ENI) cannot match a
        // name glob, and the MAC is known before boot.
        config.network.interfaces = [
            InstanceConfig.Network.Interface(
                macAddress: MachineConfig(name: spec.name.rawValue).macAddress, dhcp4: true)
        ]
        // `nofail` keeps a boot going when a folder cannot be mounted; readiness then checks every mount and
        // fails the launch naming the one that is missing (`checkMounts`).
        for (index, mount) in spec.mounts.enumerated() {
            let options =
                spec.mountType == .ninep ? "trans=virtio,version=9p2000.L,msize=262144,nofail" : "defaults,nofail"
            config.mounts.append([
                Self.shareTag(index), mount.guestPath, spec.mountType.guestFileSystem, options, "0", "0",
            ])
        }
        if let ephemeral = spec.ephemeral {
            config.mounts.append([
                "LABEL=\(Ephemeral.label)", ephemeral.mountPoint, "ext4",
                "defaults,nofail,x-systemd.device-timeout=10s",
                "0", "2",
            ])
        }
        return config
    }

    /// The tag of the `index`th shared folder, as the machine exports it and the guest's fstab mounts it.
    static func shareTag(_ index: Int) -> String { "nimbus\(index)" }

    /// The name the instance's host key is filed under in its known_hosts.
    static func hostAlias(_ name: InstanceName) -> String { "nimbus-\(name)" }

    /// Writes the instance's known_hosts: `key` under its host alias, the one key SSH accepts for it.
    static func pin(_ key: SSHKeyPair, of name: InstanceName, in dir: InstanceDirectory) throws(NimbusError) {
        try AtomicFile.write(Data("\(hostAlias(name)) \(key.publicKeyLine)\n".utf8), to: dir.knownHosts)
    }

    /// The image as people name it: distribution, release and version, else its reference.
    static func describe(_ image: CachedImage) -> String {
        [image.distribution.map { "\($0)" }, image.release, image.version.map { "(\($0))" }].compactMap { $0 }
            .joined(separator: " ").nonEmpty ?? image.reference
    }

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
            let spec = try networks.load(attachment.network)
            guard let address = attachment.address, let mac = attachment.macAddress else { continue }
            let domain = networks.definition(spec).domain
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

    /// The folder holding the NoCloud files of an instance whose seed travels over HTTP.
    static func seedFolder(_ dir: InstanceDirectory) -> URL {
        dir.url.appending(path: "seed", directoryHint: .isDirectory)
    }

    /// Writes the seed's four files into the instance's `seed/` folder, readable by the owner only (user-data
    /// may carry secrets), each one atomically.
    func writeSeedFolder(_ seed: NoCloudSeed, in dir: InstanceDirectory) throws(NimbusError) {
        let folder = Self.seedFolder(dir)
        do {
            try FileManager.default.createDirectory(
                at: folder, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        } catch {
            throw NimbusError(.io, "cannot create the seed folder \(folder.path): \(error.localizedDescription)")
        }
        for file in seed.files {
            try AtomicFile.write(Data(file.contents), to: folder.appending(path: file.name), permissions: 0o600)
        }
    }

    /// Adds each volume to the guest's configuration (`InstanceConfig.volumes`): its device, label and mount
    /// point, which the cloud-init and Ignition renderers turn into a filesystem made on first use and a mount.
    func addVolumes(_ attachments: [VolumeAttachment], to config: inout InstanceConfig) throws(NimbusError) {
        for attachment in attachments {
            let volume = try volumes.load(attachment.volume)
            config.volumes.append(
                InstanceConfig.DataVolume(
                    device: volume.guestDevice, label: volume.label, mountPoint: attachment.mountPoint))
        }
    }
}
