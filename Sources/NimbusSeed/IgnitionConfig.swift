import Foundation
import Yams

/// An Ignition spec 3.x config (Fedora CoreOS, Flatcar, RHCOS) rendered from the same `InstanceConfig`.
///
/// The spec version is the lowest that expresses the config (`specVersion`, `versionReason`): Ignition
/// accepts older specs, never newer ones (Debian's Ignition 2.14 refuses 3.4.0, as do Flatcar's, RHCOS's and
/// older Fedora CoreOS releases), and everything Nimbus writes today (users with keys and groups, files with
/// modes, owners and appends, links, units) is spec 3.0.0, which every Ignition since 2.0 reads.
///
/// Translation: users (`core` when none is named) with their SSH keys and groups, a sudoers drop-in for
/// `sudo` rules; `/etc/hostname`; `/etc/locale.conf`; `timezone` as the `/etc/localtime` link;
/// `write_files` as `storage.files` (mode in decimal, `b64` content as a base64 data URL, `append` as
/// `append`); host keys as `/etc/ssh/ssh_host_ed25519_key{,.pub}`; `runcmd` as a script run once by a
/// oneshot unit with an `[Install]` section. Anything else is an error naming the option: never dropped.
public struct IgnitionConfig: Sendable {
    /// The config as pretty JSON with sorted keys, ending in a newline.
    public let json: String
    /// The spec version `json` declares.
    public let specVersion: String
    /// Why that version, for `--verbose`: the feature that needs it, or that none needs more.
    public let versionReason: String

    /// Translates `config`, merged with the user's `#cloud-config` when given (same precedence as the
    /// NoCloud seed: the user wins on scalars, lists are appended). A user's own Ignition config is merged
    /// in by Ignition itself (`ignition.config.merge`, a data URL of it as written), so where both set
    /// something the user's wins, as a child config does in Ignition; the result declares the user's spec
    /// version when it is newer than the one Nimbus's own part needs.
    public init(config: InstanceConfig, userData: UserData? = nil, userConfig: UserIgnition? = nil)
        throws(SeedError)
    {
        var config = config
        if let userData {
            guard userData.kind == .cloudConfig, let node = userData.cloudConfig else {
                throw .invalidValue(
                    "\(userData.source) is \(userData.kind.rawValue) user-data: Ignition can only translate #cloud-config"
                )
            }
            config = config.merged(withUserConfig: try Self.decode(node, source: userData.source))
        }
        try Self.rejectUnsupported(config)
        (json, specVersion, versionReason) = try Self.render(config, userConfig: userConfig)
    }

    /// The spec version of what Nimbus writes itself. Everything it renders (users, files, links, units) is
    /// spec 3.0.0; a feature of a later spec (file compression: 3.1.0; `shouldExist`, LUKS: 3.2.0; kernel
    /// arguments: 3.3.0), once rendered, must raise the version `render` declares when it is used.
    static let baseVersion = (version: "3.0.0", reason: "users, files, links and units need nothing newer")

    static let translatable: Set<String> = [
        "hostname", "fqdn", "locale", "timezone", "users", "ssh_authorized_keys", "write_files", "runcmd",
        "ssh_pwauth", "prefer_fqdn_over_hostname", "manage_etc_hosts", "growpart",
    ]

    /// Reads the user's cloud-config into an `InstanceConfig`; a key with no Ignition equivalent is an error.
    static func decode(_ node: Node, source: String) throws(SeedError) -> InstanceConfig {
        guard case .mapping(let mapping) = node else { return InstanceConfig() }
        var kept: [(Node, Node)] = []
        for (key, value) in mapping {
            let name = key.string ?? ""
            if ["manage_etc_hosts", "growpart", "prefer_fqdn_over_hostname"].contains(name) { continue }
            if name == "ssh_pwauth", value.bool == false { continue }
            guard
                translatable.contains(name)
                    || [
                        "mounts", "mount_default_fields", "swap", "packages", "package_update",
                        "package_upgrade", "bootcmd", "phone_home", "power_state",
                    ].contains(name)
            else { throw .unsupportedByIgnition(option: name) }
            if name == "users", case .sequence(let users) = value {
                // `default` names the image's default user: on CoreOS that is `core`, made anyway.
                let named = Array(users).filter { $0.string != "default" }.map { user -> Node in
                    guard case .mapping(var fields) = user else { return user }
                    if let groups = fields["groups"]?.string {
                        fields["groups"] = YAML.strings(
                            groups.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) })
                    }
                    if case .sequence? = fields["sudo"] { fields["sudo"] = fields["sudo"]?.sequence?.first }
                    return .mapping(fields)
                }
                kept.append((key, YAML.sequence(named)))
            } else if name == "write_files", case .sequence(let files) = value {
                let converted = files.map { file -> Node in
                    guard case .mapping(var fields) = file, let permissions = fields["permissions"] else { return file }
                    fields["permissions"] = YAML.string(permissions.string ?? "")
                    return .mapping(fields)
                }
                kept.append((key, YAML.sequence(converted)))
            } else {
                kept.append((key, value))
            }
        }
        do {
            return try YAMLDecoder().decode(InstanceConfig.self, from: YAML.mapping(nodePairs: kept))
        } catch {
            throw .invalidDocument(file: source, line: 1, column: 1, problem: "cannot translate to Ignition: \(error)")
        }
    }

    static func rejectUnsupported(_ config: InstanceConfig) throws(SeedError) {
        func reject(_ option: String, _ isSet: Bool) throws(SeedError) {
            if isSet { throw .unsupportedByIgnition(option: option) }
        }
        try reject("mounts", !config.mounts.isEmpty)
        try reject("mount_default_fields", config.mountDefaultFields != nil)
        try reject("swap", config.swap != nil)
        try reject("packages", !config.packages.isEmpty)
        try reject("package_update", config.packageUpdate == true)
        try reject("package_upgrade", config.packageUpgrade == true)
        try reject("bootcmd", !config.bootcmd.isEmpty)
        try reject("phone_home", config.phoneHome != nil)
        try reject("power_state", config.powerState != nil)
        try reject("ssh_pwauth", config.sshPasswordAuthentication)
        try reject(
            "network (static addresses without a MAC)",
            config.network.interfaces.contains { !$0.addresses.isEmpty && $0.macAddress == nil })
        for file in config.writeFiles {
            if let encoding = file.encoding, !["text", "b64", "base64"].contains(encoding.lowercased()) {
                throw .unsupportedByIgnition(option: "write_files encoding \(encoding) (\(file.path))")
            }
        }
    }

    // MARK: - Rendering

    /// A volume's mount unit, and a service that grows its filesystem to the disk at each boot (after
    /// `nimbus volume resize`; ext4 grows online).
    static func volumeUnits(_ volume: InstanceConfig.DataVolume) -> [Unit] {
        let mount = unitName(forPath: volume.mountPoint) + ".mount"
        return [
            Unit(
                name: mount, enabled: true,
                contents: """
                    [Unit]
                    Description=Nimbus volume \(volume.label) at \(volume.mountPoint)

                    [Mount]
                    What=/dev/disk/by-label/\(volume.label)
                    Where=\(volume.mountPoint)
                    Type=ext4
                    Options=defaults,nofail

                    [Install]
                    WantedBy=local-fs.target

                    """),
            Unit(
                name: "nimbus-grow-\(unitName(forPath: volume.mountPoint)).service", enabled: true,
                contents: """
                    [Unit]
                    Description=Grow Nimbus volume \(volume.label) to its disk
                    Requires=\(mount)
                    After=\(mount)

                    [Service]
                    Type=oneshot
                    ExecStart=/usr/sbin/resize2fs /dev/disk/by-label/\(volume.label)

                    [Install]
                    WantedBy=multi-user.target

                    """),
        ]
    }

    /// The name systemd gives the unit of `path` (`systemd-escape --path`): `/var/lib/pg` is `var-lib-pg`; bytes
    /// other than ASCII letters, digits, `_` and a `.` that does not lead are written `\xNN`.
    static func unitName(forPath path: String) -> String {
        let parts = path.split(separator: "/").map { component in
            component.utf8.enumerated().map { index, byte -> String in
                let character = Character(UnicodeScalar(byte))
                let plain =
                    character.isASCII && (character.isLetter || character.isNumber || character == "_")
                    || (character == "." && index > 0)
                return plain ? String(character) : String(format: "\\x%02x", byte)
            }.joined()
        }
        return parts.isEmpty ? "-" : parts.joined(separator: "-")
    }

    struct Config: Encodable {
        var ignition = Version(version: baseVersion.version)
        var passwd: Passwd
        var storage: Storage
        var systemd: Systemd
    }
    struct Version: Encodable {
        var version: String
        var config: Merge?
    }
    struct Merge: Encodable { var merge: [Contents] }
    struct Passwd: Encodable { var users: [User] }
    struct User: Encodable {
        var name: String
        var sshAuthorizedKeys: [String]?
        var groups: [String]?
        var shell: String?
    }
    struct Storage: Encodable {
        var files: [File]
        var links: [Link]?
        var filesystems: [Filesystem]?
    }
    /// A filesystem Ignition makes in the initramfs at first boot; with `wipeFilesystem` false one that is there
    /// already with this format and label is kept, data and all.
    struct Filesystem: Encodable {
        var device: String
        var format: String
        var label: String
        var wipeFilesystem: Bool
    }
    struct Owner: Encodable { var name: String }
    struct Contents: Encodable { var source: String }
    struct File: Encodable {
        var path: String
        var mode: Int
        var overwrite: Bool?
        var contents: Contents?
        var append: [Contents]?
        var user: Owner?
        var group: Owner?
    }
    struct Link: Encodable {
        var path: String
        var target: String
        var hard = false
        var overwrite = true
    }
    struct Systemd: Encodable { var units: [Unit] }
    struct Unit: Encodable {
        var name: String
        var enabled: Bool
        var contents: String
    }

    /// NICs with static addresses (Nimbus networks), matched by MAC, as both stacks CoreOS images use read
    /// them: a NetworkManager keyfile (Fedora CoreOS) and a systemd-networkd unit, sorted before any DHCP
    /// catch-all. Each stack ignores the other's file. No default route unless a gateway is given.
    static func networkFiles(_ network: InstanceConfig.Network) -> [File] {
        var files: [File] = []
        for interface in network.interfaces where !interface.addresses.isEmpty {
            guard let mac = interface.macAddress?.lowercased() else { continue }
            let id = "nimbus-" + mac.replacingOccurrences(of: ":", with: "")
            var keyfile =
                "[connection]\nid=\(id)\ntype=ethernet\nautoconnect=true\n\n[ethernet]\nmac-address=\(mac)\n\n"
            keyfile += "[ipv4]\nmethod=manual\n"
            for (index, address) in interface.addresses.enumerated() { keyfile += "address\(index + 1)=\(address)\n" }
            keyfile += interface.gateway4.map { "gateway=\($0)\n" } ?? "never-default=true\n"
            if !interface.nameservers.isEmpty { keyfile += "dns=\(interface.nameservers.joined(separator: ";"));\n" }
            if !interface.searchDomains.isEmpty {
                keyfile += "dns-search=\(interface.searchDomains.joined(separator: ";"));\n"
            }
            keyfile += "\n[ipv6]\nmethod=disabled\n"
            var unit = "[Match]\nMACAddress=\(mac)\n\n[Link]\nRequiredForOnline=no\n\n[Network]\n"
            for address in interface.addresses { unit += "Address=\(address)\n" }
            if let gateway = interface.gateway4 { unit += "Gateway=\(gateway)\n" }
            for server in interface.nameservers { unit += "DNS=\(server)\n" }
            if !interface.searchDomains.isEmpty {
                unit += "Domains=\(interface.searchDomains.joined(separator: " "))\n"
            }
            files.append(
                File(
                    path: "/etc/NetworkManager/system-connections/\(id).nmconnection", mode: 0o600, overwrite: true,
                    contents: Contents(source: dataURL(keyfile))))
            files.append(
                File(
                    path: "/etc/systemd/network/10-\(id).network", mode: 0o644, overwrite: true,
                    contents: Contents(source: dataURL(unit))))
        }
        return files
    }

    static func dataURL(_ text: String) -> String { "data:;base64," + Data(text.utf8).base64EncodedString() }

    static func render(_ config: InstanceConfig, userConfig: UserIgnition? = nil) throws(SeedError) -> (
        json: String, version: String, reason: String
    ) {
        var users = config.users
        if let user = config.defaultUser { users.insert(user, at: 0) }
        if users.isEmpty { users = [InstanceConfig.User(name: "core", sudo: nil, shell: nil)] }
        // Top-level keys belong to the image's default user, which on CoreOS is `core`.
        if !config.sshAuthorizedKeys.isEmpty {
            if let index = users.firstIndex(where: { $0.name == "core" }) {
                users[index].sshAuthorizedKeys += config.sshAuthorizedKeys
            } else {
                users.append(
                    InstanceConfig.User(
                        name: "core", sshAuthorizedKeys: config.sshAuthorizedKeys, sudo: nil, shell: nil))
            }
        }
        var files: [File] = []
        var links: [Link] = []
        var units: [Unit] = []
        for user in users where user.sudo != nil {
            files.append(
                File(
                    path: "/etc/sudoers.d/\(user.name)", mode: 0o440, overwrite: true,
                    contents: Contents(source: dataURL("\(user.name) \(user.sudo ?? "")\n"))))
        }
        if let hostname = config.resolvedFQDN ?? config.hostname {
            files.append(
                File(
                    path: "/etc/hostname", mode: 0o644, overwrite: true,
                    contents: Contents(source: dataURL(hostname + "\n"))))
        }
        if let locale = config.locale {
            files.append(
                File(
                    path: "/etc/locale.conf", mode: 0o644, overwrite: true,
                    contents: Contents(source: dataURL("LANG=\(locale)\n"))))
        }
        if let keys = config.hostKeys {
            files.append(
                File(
                    path: "/etc/ssh/ssh_host_ed25519_key", mode: 0o600, overwrite: true,
                    contents: Contents(source: dataURL(keys.ed25519Private))))
            files.append(
                File(
                    path: "/etc/ssh/ssh_host_ed25519_key.pub", mode: 0o644, overwrite: true,
                    contents: Contents(source: dataURL(keys.ed25519Public + "\n"))))
        }
        for file in config.writeFiles {
            let mode: Int
            if let permissions = file.permissions {
                guard
                    let parsed = Int(
                        permissions.hasPrefix("0o") ? String(permissions.dropFirst(2)) : permissions, radix: 8)
                else {
                    throw .invalidValue(
                        "write_files \(file.path): permissions \"\(permissions)\" is not an octal mode like \"0644\"")
                }
                mode = parsed
            } else {
                mode = 0o644
            }
            let source: String
            switch file.encoding?.lowercased() {
            case "b64", "base64": source = "data:;base64," + file.content.filter { !$0.isWhitespace }
            default: source = dataURL(file.content)
            }
            let owner = file.owner?.split(separator: ":", maxSplits: 1).map(String.init) ?? []
            files.append(
                File(
                    path: file.path, mode: mode, overwrite: file.append ? nil : true,
                    contents: file.append ? nil : Contents(source: source),
                    append: file.append ? [Contents(source: source)] : nil,
                    user: owner.first.map(Owner.init), group: owner.count > 1 ? Owner(name: owner[1]) : nil))
        }
        files += networkFiles(config.network)
        if let timezone = config.timezone {
            links.append(Link(path: "/etc/localtime", target: "../usr/share/zoneinfo/\(timezone)"))
        }
        if !config.runcmd.isEmpty {
            let script =
                "#!/bin/sh\n# cloud-config runcmd, translated by Nimbus\nset -e\n"
                + config.runcmd.map(\.shellLine).joined(separator: "\n") + "\n"
            files.append(
                File(
                    path: "/usr/local/bin/nimbus-runcmd", mode: 0o755, overwrite: true,
                    contents: Contents(source: dataURL(script))))
            units.append(
                Unit(
                    name: "nimbus-runcmd.service", enabled: true,
                    contents: """
                        [Unit]
                        Description=Nimbus first-boot commands (cloud-config runcmd)
                        Wants=network-online.target
                        After=network-online.target
                        ConditionPathExists=!/var/lib/nimbus/runcmd.done

                        [Service]
                        Type=oneshot
                        RemainAfterExit=yes
                        ExecStart=/usr/local/bin/nimbus-runcmd
                        ExecStartPost=/usr/bin/mkdir -p /var/lib/nimbus
                        ExecStartPost=/usr/bin/touch /var/lib/nimbus/runcmd.done

                        [Install]
                        WantedBy=multi-user.target

                        """))
        }
        for volume in config.volumes { units += Self.volumeUnits(volume) }
        var document = Config(
            passwd: Passwd(
                users: users.map { user in
                    User(
                        name: user.name,
                        sshAuthorizedKeys: user.sshAuthorizedKeys.isEmpty ? nil : user.sshAuthorizedKeys,
                        groups: user.groups.isEmpty ? nil : user.groups, shell: user.shell)
                }),
            storage: Storage(
                files: files, links: links.isEmpty ? nil : links,
                filesystems: config.volumes.isEmpty
                    ? nil
                    : config.volumes.map {
                        Filesystem(device: $0.device, format: "ext4", label: $0.label, wipeFilesystem: false)
                    }),
            systemd: Systemd(units: units))
        var required = baseVersion
        if let userConfig {
            document.ignition.config = Merge(merge: [Contents(source: dataURL(userConfig.text))])
            if UserIgnition.isOlder(required.version, than: userConfig.version) {
                required = (userConfig.version, "\(userConfig.source), merged into it, declares that spec")
            }
        }
        document.ignition.version = required.version
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        do {
            return (
                String(decoding: try encoder.encode(document), as: UTF8.self) + "\n", required.version, required.reason
            )
        } catch {
            throw .invalidValue("could not render the Ignition config: \(error)")
        }
    }
}

extension InstanceConfig {
    /// This config (Nimbus's flags) with the user's own on top: the user wins on scalars, lists are
    /// appended (the user's first).
    public func merged(withUserConfig user: InstanceConfig) -> InstanceConfig {
        var result = self
        result.hostname = user.hostname ?? hostname
        result.fqdn = user.fqdn ?? fqdn
        result.domain = user.domain ?? domain
        result.locale = user.locale ?? locale
        result.timezone = user.timezone ?? timezone
        result.users = user.users + users
        result.sshAuthorizedKeys = user.sshAuthorizedKeys + sshAuthorizedKeys
        result.hostKeys = user.hostKeys ?? hostKeys
        result.sshPasswordAuthentication = user.sshPasswordAuthentication || sshPasswordAuthentication
        result.mounts = user.mounts + mounts
        result.mountDefaultFields = user.mountDefaultFields ?? mountDefaultFields
        result.swap = user.swap ?? swap
        result.packages = user.packages + packages
        result.packageUpdate = user.packageUpdate ?? packageUpdate
        result.packageUpgrade = user.packageUpgrade ?? packageUpgrade
        result.bootcmd = user.bootcmd + bootcmd
        result.runcmd = user.runcmd + runcmd
        result.writeFiles = user.writeFiles + writeFiles
        result.phoneHome = user.phoneHome ?? phoneHome
        result.powerState = user.powerState ?? powerState
        return result
    }
}
