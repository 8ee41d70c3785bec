import Foundation
import Yams

/// Turns an `InstanceConfig` into cloud-config mappings: Nimbus's defaults (vendor-data), what the user
/// asked for (user-data) and the network (network-config v2).
enum CloudConfigRenderer {
    /// Run by bootcmd at every boot for each volume, with its device, label and mount point. Waits up to 10 s
    /// for udev's by-id link; makes an ext4 filesystem only on a disk with no signature at all (`blkid -p`, a
    /// low-level probe, finds none), so data is never overwritten; mounts it unless it is mounted already (on
    /// later boots systemd mounts it from the fstab line cloud-init wrote, possibly before this runs); and grows
    /// the mounted filesystem to the disk (after a resize; ext4 grows online, without a check, and a
    /// filesystem as large as its disk is left alone).
    static let volumeScript = """
        dev=$1 label=$2 dir=$3 i=0
        while [ ! -e "$dev" ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
        [ -e "$dev" ] || { echo "nimbus: volume $label: no disk $dev" >&2; exit 0; }
        if ! blkid -p "$dev" >/dev/null 2>&1; then
          mkfs.ext4 -q -L "$label" -E lazy_itable_init=1,lazy_journal_init=1 "$dev"
        fi
        mkdir -p "$dir"
        mountpoint -q "$dir" || mount "$dev" "$dir" || true
        if mountpoint -q "$dir"; then resize2fs "$dev" >/dev/null 2>&1 || true; fi
        exit 0
        """

    /// Nimbus's defaults: its own user and key, the host keys, no password logins, the root partition
    /// grown to the disk, /etc/hosts managed (so the fqdn resolves).
    static func vendorPairs(_ config: InstanceConfig) -> [(String, Node?)] {
        var pairs: [(String, Node?)] = []
        if let user = config.defaultUser { pairs.append(("users", YAML.sequence([userNode(user)]))) }
        if let keys = config.hostKeys {
            pairs.append(
                (
                    "ssh_keys",
                    YAML.mapping([
                        ("ed25519_private", YAML.string(keys.ed25519Private)),
                        ("ed25519_public", YAML.string(keys.ed25519Public)),
                    ])
                ))
        }
        pairs.append(("ssh_pwauth", YAML.bool(false)))
        pairs.append(("growpart", YAML.mapping([("mode", YAML.string("auto")), ("devices", YAML.strings(["/"]))])))
        pairs.append(("manage_etc_hosts", YAML.bool(true)))
        return pairs
    }

    /// What the user asked for through `InstanceConfig`, in cloud-config's own order of reading.
    static func userPairs(_ config: InstanceConfig) -> [(String, Node?)] {
        var pairs: [(String, Node?)] = []
        pairs.append(("hostname", config.hostname.map(YAML.string)))
        pairs.append(("fqdn", config.resolvedFQDN.map(YAML.string)))
        if config.resolvedFQDN != nil { pairs.append(("prefer_fqdn_over_hostname", YAML.bool(false))) }
        pairs.append(("locale", config.locale.map(YAML.string)))
        pairs.append(("timezone", config.timezone.map(YAML.string)))
        if !config.users.isEmpty { pairs.append(("users", YAML.sequence(config.users.map(userNode)))) }
        if !config.sshAuthorizedKeys.isEmpty {
            pairs.append(("ssh_authorized_keys", YAML.strings(config.sshAuthorizedKeys)))
        }
        if config.sshPasswordAuthentication { pairs.append(("ssh_pwauth", YAML.bool(true))) }
        // Volumes are mounted by label with `nofail` (a missing disk does not stop the boot), after the mounts.
        let mounts =
            config.mounts
            + config.volumes.map {
                ["LABEL=\($0.label)", $0.mountPoint, "ext4", "defaults,nofail,x-systemd.device-timeout=10s", "0", "2"]
            }
        if !mounts.isEmpty { pairs.append(("mounts", YAML.sequence(mounts.map(YAML.strings)))) }
        // `None` marks a field cloud-init fills itself: YAML null, as its documentation's example means.
        pairs.append(
            (
                "mount_default_fields",
                config.mountDefaultFields.map { fields in
                    YAML.sequence(
                        fields.map {
                            ["none", "null", "~"].contains($0.lowercased())
                                ? .scalar(.init("null", YAML.tag(.null), .plain)) : YAML.string($0)
                        })
                }
            ))
        if let swap = config.swap {
            pairs.append(
                (
                    "swap",
                    YAML.mapping([
                        ("filename", swap.filename.map(YAML.string)), ("size", scalar(swap.size)),
                        ("maxsize", swap.maxsize.map(scalar)),
                    ])
                ))
        }
        pairs.append(("package_update", config.packageUpdate.map(YAML.bool)))
        pairs.append(("package_upgrade", config.packageUpgrade.map(YAML.bool)))
        if !config.packages.isEmpty { pairs.append(("packages", YAML.strings(config.packages))) }
        let bootcmd =
            config.bootcmd
            + config.volumes.map {
                InstanceConfig.Command.arguments([
                    "sh", "-c", volumeScript, "nimbus-volume", $0.device, $0.label, $0.mountPoint,
                ])
            }
        if !bootcmd.isEmpty { pairs.append(("bootcmd", YAML.sequence(bootcmd.map(commandNode)))) }
        if !config.writeFiles.isEmpty {
            pairs.append(("write_files", YAML.sequence(config.writeFiles.map(writeFileNode))))
        }
        if !config.runcmd.isEmpty { pairs.append(("runcmd", YAML.sequence(config.runcmd.map(commandNode)))) }
        if let phone = config.phoneHome {
            pairs.append(
                (
                    "phone_home",
                    YAML.mapping([
                        ("url", YAML.string(phone.url)),
                        ("post", phone.post.map { $0.isEmpty ? YAML.string("all") : YAML.strings($0) }),
                        ("tries", phone.tries.map(YAML.int)),
                    ])
                ))
        }
        if let power = config.powerState {
            pairs.append(
                (
                    "power_state",
                    YAML.mapping([
                        ("mode", YAML.string(power.mode)), ("delay", power.delay.map(YAML.string)),
                        ("message", power.message.map(YAML.string)), ("timeout", power.timeout.map(YAML.int)),
                        ("condition", power.condition.map(YAML.string)),
                    ])
                ))
        }
        return pairs.filter { $0.1 != nil }
    }

    /// Sizes may be numbers or words (`auto`, `1G`): numbers stay numbers.
    static func scalar(_ value: String) -> Node {
        Int(value) != nil ? .scalar(.init(value, YAML.tag(.int), .plain)) : YAML.string(value)
    }

    static func userNode(_ user: InstanceConfig.User) -> Node {
        YAML.mapping([
            ("name", YAML.string(user.name)),
            ("groups", user.groups.isEmpty ? nil : YAML.string(user.groups.joined(separator: ", "))),
            ("sudo", user.sudo.map(YAML.string)),
            ("shell", user.shell.map(YAML.string)),
            ("lock_passwd", YAML.bool(user.lockPassword)),
            ("ssh_authorized_keys", user.sshAuthorizedKeys.isEmpty ? nil : YAML.strings(user.sshAuthorizedKeys)),
        ])
    }

    static func commandNode(_ command: InstanceConfig.Command) -> Node {
        switch command {
        case .shell(let line): return YAML.string(line)
        case .arguments(let arguments): return YAML.strings(arguments)
        }
    }

    static func writeFileNode(_ file: InstanceConfig.WriteFile) -> Node {
        YAML.mapping([
            ("path", YAML.string(file.path)),
            ("content", YAML.string(file.content)),
            ("encoding", file.encoding.map(YAML.string)),
            ("owner", file.owner.map(YAML.string)),
            ("permissions", file.permissions.map { .scalar(.init($0, YAML.tag(.str), .singleQuoted)) }),
            ("append", file.append ? YAML.bool(true) : nil),
        ])
    }

    /// The network-config written when no interface is given: no device, so cloud-init uses its fallback
    /// (DHCP on the first NIC, by its real name). A v2 entry cannot say "the first NIC" without its MAC:
    /// cloud-init's ENI renderer (Debian 12) names the interface after the entry's key and ignores
    /// `match: {name: en*}`, which leaves the guest without network. The file is still written, so a seed
    /// always holds all four NoCloud files.
    static let fallbackNetworkConfig = """
        # network-config: no interface was given, so cloud-init applies its fallback configuration
        # (DHCP on the first NIC). Nimbus writes version 2 with MAC-matched NICs when it knows them.

        """

    /// network-config version 2. NICs are matched by MAC address and keep the name the guest's kernel
    /// gives them (cloud-init looks the name up by MAC when `set-name` is absent). The first one is the
    /// primary (DHCP unless static addresses are given); the others are optional and get a higher route
    /// metric.
    static func networkNode(_ network: InstanceConfig.Network) -> Node {
        var ethernets: [(String, Node?)] = []
        for (index, interface) in network.interfaces.enumerated() {
            let id = index == 0 ? "primary" : "extra\(index - 1)"
            let isStatic = !interface.addresses.isEmpty
            var dns: Node?
            if !interface.nameservers.isEmpty || !interface.searchDomains.isEmpty {
                dns = YAML.mapping([
                    ("addresses", interface.nameservers.isEmpty ? nil : YAML.strings(interface.nameservers)),
                    ("search", interface.searchDomains.isEmpty ? nil : YAML.strings(interface.searchDomains)),
                ])
            }
            let match: Node =
                interface.macAddress.map { YAML.mapping([("macaddress", YAML.string($0.lowercased()))]) }
                ?? YAML.mapping([("name", YAML.string(interface.name ?? "eth\(index)"))])
            ethernets.append(
                (
                    id,
                    YAML.mapping([
                        ("match", match),
                        ("set-name", interface.macAddress != nil ? interface.name.map(YAML.string) : nil),
                        ("dhcp4", YAML.bool(interface.dhcp4 ?? !isStatic)),
                        // Extra NICs must not hold up boot or steal the default route.
                        (
                            "dhcp4-overrides",
                            index > 0 && (interface.dhcp4 ?? !isStatic)
                                ? YAML.mapping([("route-metric", YAML.int(100 * (index + 1)))]) : nil
                        ),
                        ("optional", index > 0 ? YAML.bool(true) : nil),
                        ("addresses", isStatic ? YAML.strings(interface.addresses) : nil),
                        // gateway4, not `routes`: cloud-init 22.4 (Debian 12) fails on `to: default`, and its
                        // ifupdown renderer turns a route into `route add` (net-tools, absent from cloud
                        // images) where gateway4 becomes ifupdown's own `gateway` line.
                        ("gateway4", interface.gateway4.map(YAML.string)),
                        ("nameservers", dns),
                    ])
                ))
        }
        return YAML.mapping([("version", YAML.int(2)), ("ethernets", YAML.mapping(ethernets))])
    }
}

/// Merging what Nimbus must set into the user's own `#cloud-config`.
///
/// Precedence: a key only one side has is kept; when both have it, lists are appended (the user's items
/// first, then Nimbus's) and for anything else (scalars, mappings) the user's value wins.
public enum CloudConfigMerge {
    static func merge(user: Node, nimbus pairs: [(String, Node?)]) -> Node {
        guard case .mapping(var mapping) = user else { return user }
        for (key, value) in pairs {
            guard let value else { continue }
            let keyNode = YAML.string(key)
            if let existing = mapping[keyNode] {
                if case .sequence(let mine) = existing, case .sequence(let theirs) = value {
                    mapping[keyNode] = YAML.sequence(Array(mine) + Array(theirs))
                }
            } else {
                mapping[keyNode] = value
            }
        }
        return .mapping(mapping)
    }
}
