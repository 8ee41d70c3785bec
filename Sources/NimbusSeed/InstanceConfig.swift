import Foundation

/// The personality of one instance: who may log in, what it is called, what runs on first boot, how its
/// network is set up. Rendered as a cloud-init NoCloud seed (`NoCloudSeed`) or an Ignition config
/// (`IgnitionConfig`).
///
/// Keys follow cloud-config's names (`ssh_authorized_keys`, `write_files`, ...) so that the YAML form of
/// this type reads like cloud-config. Every key may be left out and decodes to its default; `version`
/// tells future Nimbus releases which shape they read.
public struct InstanceConfig: Codable, Sendable, Equatable {
    /// The shape of this type written by this release.
    public static let currentVersion = 1

    /// The shape this value was written in.
    public var version: Int = Self.currentVersion
    /// Short host name (`web`); also `local-hostname` in meta-data.
    public var hostname: String?
    /// Fully qualified name (`web.example.test`); wins over `hostname` + `domain`.
    public var fqdn: String?
    /// DNS domain, joined to `hostname` when `fqdn` is not given.
    public var domain: String?
    /// System locale, e.g. `en_US.UTF-8`.
    public var locale: String?
    /// Time zone name from the tz database, e.g. `Europe/Paris`.
    public var timezone: String?
    /// Users created on first boot, besides `defaultUser`.
    public var users: [User] = []
    /// Keys added to the distribution's default user (cloud-config's top-level `ssh_authorized_keys`).
    public var sshAuthorizedKeys: [String] = []
    /// Nimbus's own user: rendered into vendor-data, so the user's user-data stays the user's.
    public var defaultUser: User?
    /// SSH host keys installed in the guest, so their fingerprints are known (and pinned) before boot.
    public var hostKeys: HostKeys?
    /// Password logins over SSH; off unless asked for.
    public var sshPasswordAuthentication: Bool = false
    /// cloud-config `mounts`: fstab lines as lists (`[/dev/vdb, /srv, ext4, "defaults,nofail", "0", "2"]`).
    public var mounts: [[String]] = []
    /// cloud-config `mount_default_fields`: the fstab fields filled in for short `mounts` entries (`None`
    /// for a field cloud-init fills itself).
    public var mountDefaultFields: [String]?
    /// A swap file made on first boot.
    public var swap: Swap?
    /// Packages installed on first boot.
    public var packages: [String] = []
    /// Refresh the package index on first boot.
    public var packageUpdate: Bool?
    /// Upgrade installed packages on first boot.
    public var packageUpgrade: Bool?
    /// Commands run early on every boot.
    public var bootcmd: [Command] = []
    /// Commands run once, late in the first boot.
    public var runcmd: [Command] = []
    /// Files written on first boot.
    public var writeFiles: [WriteFile] = []
    /// Where the instance posts its keys and identity once booted.
    public var phoneHome: PhoneHome?
    /// Power off or reboot when cloud-init is done.
    public var powerState: PowerState?
    /// Network interfaces; empty means DHCP on the first NIC.
    public var network: Network = Network()
    /// Data disks the guest formats (ext4, only when blank) and mounts at every boot: Nimbus volumes.
    public var volumes: [DataVolume] = []

    /// A data disk found by its stable device path, its filesystem made on first use, mounted by label.
    public struct DataVolume: Codable, Sendable, Equatable {
        /// The disk as the guest sees it (`/dev/disk/by-id/virtio-vol-data`).
        public var device: String
        /// The ext4 label (at most 16 bytes), which the guest mounts it by.
        public var label: String
        /// Where it is mounted (an absolute path).
        public var mountPoint: String

        /// The volume on `device`, labelled `label`, mounted at `mountPoint`.
        public init(device: String, label: String, mountPoint: String) {
            self.device = device
            self.label = label
            self.mountPoint = mountPoint
        }

        enum CodingKeys: String, CodingKey {
            case device, label
            case mountPoint = "mount_point"
        }
    }

    /// An empty configuration: DHCP on the first NIC, nothing else.
    public init() {}

    /// The fully qualified name, from `fqdn` or `hostname` + `domain`.
    public var resolvedFQDN: String? {
        if let fqdn { return fqdn }
        guard let hostname, let domain, !domain.isEmpty else { return nil }
        return "\(hostname).\(domain)"
    }

    enum CodingKeys: String, CodingKey {
        case version, hostname, fqdn, domain, locale, timezone, users, mounts, swap, packages, bootcmd, runcmd, network,
            volumes
        case sshAuthorizedKeys = "ssh_authorized_keys"
        case defaultUser = "default_user"
        case hostKeys = "host_keys"
        case sshPasswordAuthentication = "ssh_pwauth"
        case mountDefaultFields = "mount_default_fields"
        case packageUpdate = "package_update"
        case packageUpgrade = "package_upgrade"
        case writeFiles = "write_files"
        case phoneHome = "phone_home"
        case powerState = "power_state"
    }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        version = try c.decodeIfPresent(Int.self, forKey: .version) ?? Self.currentVersion
        hostname = try c.decodeIfPresent(String.self, forKey: .hostname)
        fqdn = try c.decodeIfPresent(String.self, forKey: .fqdn)
        domain = try c.decodeIfPresent(String.self, forKey: .domain)
        locale = try c.decodeIfPresent(String.self, forKey: .locale)
        timezone = try c.decodeIfPresent(String.self, forKey: .timezone)
        users = try c.decodeIfPresent([User].self, forKey: .users) ?? []
        sshAuthorizedKeys = try c.decodeIfPresent([String].self, forKey: .sshAuthorizedKeys) ?? []
        defaultUser = try c.decodeIfPresent(User.self, forKey: .defaultUser)
        hostKeys = try c.decodeIfPresent(HostKeys.self, forKey: .hostKeys)
        sshPasswordAuthentication = try c.decodeIfPresent(Bool.self, forKey: .sshPasswordAuthentication) ?? false
        mounts = try c.decodeIfPresent([[String]].self, forKey: .mounts) ?? []
        mountDefaultFields = try c.decodeIfPresent([String].self, forKey: .mountDefaultFields)
        swap = try c.decodeIfPresent(Swap.self, forKey: .swap)
        packages = try c.decodeIfPresent([String].self, forKey: .packages) ?? []
        packageUpdate = try c.decodeIfPresent(Bool.self, forKey: .packageUpdate)
        packageUpgrade = try c.decodeIfPresent(Bool.self, forKey: .packageUpgrade)
        bootcmd = try c.decodeIfPresent([Command].self, forKey: .bootcmd) ?? []
        runcmd = try c.decodeIfPresent([Command].self, forKey: .runcmd) ?? []
        writeFiles = try c.decodeIfPresent([WriteFile].self, forKey: .writeFiles) ?? []
        phoneHome = try c.decodeIfPresent(PhoneHome.self, forKey: .phoneHome)
        powerState = try c.decodeIfPresent(PowerState.self, forKey: .powerState)
        network = try c.decodeIfPresent(Network.self, forKey: .network) ?? Network()
        volumes = try c.decodeIfPresent([DataVolume].self, forKey: .volumes) ?? []
    }

    /// A user account (cloud-config `users` entry).
    public struct User: Codable, Sendable, Equatable {
        /// Login name.
        public var name: String
        /// Supplementary groups.
        public var groups: [String] = []
        /// A sudoers rule, e.g. `ALL=(ALL) NOPASSWD:ALL`; nil for none.
        public var sudo: String?
        /// Login shell.
        public var shell: String? = "/bin/bash"
        /// Public keys allowed to log in as this user.
        public var sshAuthorizedKeys: [String] = []
        /// Lock the password, so only keys log in.
        public var lockPassword: Bool = true

        /// The usual Nimbus user: passwordless sudo, bash, locked password.
        public init(
            name: String, sshAuthorizedKeys: [String] = [], groups: [String] = [],
            sudo: String? = "ALL=(ALL) NOPASSWD:ALL", shell: String? = "/bin/bash", lockPassword: Bool = true
        ) {
            self.name = name
            self.sshAuthorizedKeys = sshAuthorizedKeys
            self.groups = groups
            self.sudo = sudo
            self.shell = shell
            self.lockPassword = lockPassword
        }

        enum CodingKeys: String, CodingKey {
            case name, groups, sudo, shell
            case sshAuthorizedKeys = "ssh_authorized_keys"
            case lockPassword = "lock_passwd"
        }

        public init(from decoder: any Decoder) throws {
            let c = try decoder.container(keyedBy: CodingKeys.self)
            name = try c.decode(String.self, forKey: .name)
            groups = try c.decodeIfPresent([String].self, forKey: .groups) ?? []
            sudo = try c.decodeIfPresent(String.self, forKey: .sudo)
            shell = try c.decodeIfPresent(String.self, forKey: .shell) ?? "/bin/bash"
            sshAuthorizedKeys = try c.decodeIfPresent([String].self, forKey: .sshAuthorizedKeys) ?? []
            lockPassword = try c.decodeIfPresent(Bool.self, forKey: .lockPassword) ?? true
        }
    }

    /// SSH host keys for the guest (only ed25519: the one algorithm every supported guest's sshd has).
    public struct HostKeys: Codable, Sendable, Equatable {
        /// The private key in `openssh-key-v1` form.
        public var ed25519Private: String
        /// The public line `ssh-ed25519 AAAA...`.
        public var ed25519Public: String

        public init(ed25519Private: String, ed25519Public: String) {
            self.ed25519Private = ed25519Private
            self.ed25519Public = ed25519Public
        }

        /// The host keys of `pair`.
        public init(ed25519 pair: SSHKeyPair) {
            self.init(ed25519Private: pair.openSSHPrivateKey, ed25519Public: pair.publicKeyLine)
        }

        enum CodingKeys: String, CodingKey {
            case ed25519Private = "ed25519_private"
            case ed25519Public = "ed25519_public"
        }
    }

    /// A command: a shell line (`sh -c`) or an argument vector.
    public enum Command: Codable, Sendable, Equatable {
        case shell(String)
        case arguments([String])

        public init(from decoder: any Decoder) throws {
            let c = try decoder.singleValueContainer()
            if let line = try? c.decode(String.self) {
                self = .shell(line)
            } else {
                self = .arguments(try c.decode([String].self))
            }
        }

        public func encode(to encoder: any Encoder) throws {
            var c = encoder.singleValueContainer()
            switch self {
            case .shell(let line): try c.encode(line)
            case .arguments(let arguments): try c.encode(arguments)
            }
        }

        /// The command as one shell line (arguments single-quoted).
        public var shellLine: String {
            switch self {
            case .shell(let line): return line
            case .arguments(let arguments):
                return arguments.map { "'" + $0.replacingOccurrences(of: "'", with: "'\\''") + "'" }.joined(
                    separator: " ")
            }
        }
    }

    /// A file written on first boot (cloud-config `write_files` entry).
    public struct WriteFile: Codable, Sendable, Equatable {
        /// Absolute path in the guest.
        public var path: String
        /// The content, encoded as `encoding` says.
        public var content: String = ""
        /// `text` (default), `b64` or `base64`; `gzip`/`gz+b64` are accepted by cloud-init only.
        public var encoding: String?
        /// `user:group`.
        public var owner: String?
        /// Octal mode as a string, e.g. `"0644"`.
        public var permissions: String?
        /// Append instead of replacing.
        public var append: Bool = false

        public init(
            path: String, content: String, encoding: String? = nil, owner: String? = nil,
            permissions: String? = nil, append: Bool = false
        ) {
            self.path = path
            self.content = content
            self.encoding = encoding
            self.owner = owner
            self.permissions = permissions
            self.append = append
        }

        public init(from decoder: any Decoder) throws {
            let c = try decoder.container(keyedBy: CodingKeys.self)
            path = try c.decode(String.self, forKey: .path)
            content = try c.decodeIfPresent(String.self, forKey: .content) ?? ""
            encoding = try c.decodeIfPresent(String.self, forKey: .encoding)
            owner = try c.decodeIfPresent(String.self, forKey: .owner)
            permissions = try c.decodeIfPresent(String.self, forKey: .permissions)
            append = try c.decodeIfPresent(Bool.self, forKey: .append) ?? false
        }
    }

    /// cloud-config `swap`.
    public struct Swap: Codable, Sendable, Equatable {
        public var filename: String?
        /// Bytes, or `auto`.
        public var size: String
        public var maxsize: String?

        public init(filename: String? = "/swap.img", size: String, maxsize: String? = nil) {
            self.filename = filename
            self.size = size
            self.maxsize = maxsize
        }
    }

    /// cloud-config `phone_home`.
    public struct PhoneHome: Codable, Sendable, Equatable {
        public var url: String
        /// Which keys to post (`pub_key_ed25519`, `instance_id`, `hostname`, `fqdn`...); empty for all.
        public var post: [String]?
        public var tries: Int?

        public init(url: String, post: [String]? = nil, tries: Int? = nil) {
            self.url = url
            self.post = post
            self.tries = tries
        }
    }

    /// cloud-config `power_state`.
    public struct PowerState: Codable, Sendable, Equatable {
        /// `poweroff`, `reboot` or `halt`.
        public var mode: String
        /// `now` or `+MINUTES`.
        public var delay: String?
        public var message: String?
        public var timeout: Int?
        public var condition: String?

        public init(
            mode: String, delay: String? = nil, message: String? = nil, timeout: Int? = nil, condition: String? = nil
        ) {
            self.mode = mode
            self.delay = delay
            self.message = message
            self.timeout = timeout
            self.condition = condition
        }
    }

    /// The instance's network interfaces.
    public struct Network: Codable, Sendable, Equatable {
        /// Interfaces in order; the first is the primary. Empty means DHCP on the first NIC.
        public var interfaces: [Interface] = []

        public init(interfaces: [Interface] = []) { self.interfaces = interfaces }

        public init(from decoder: any Decoder) throws {
            let c = try decoder.container(keyedBy: CodingKeys.self)
            interfaces = try c.decodeIfPresent([Interface].self, forKey: .interfaces) ?? []
        }

        /// One NIC, matched by MAC address when given.
        public struct Interface: Codable, Sendable, Equatable {
            /// The name the guest gives it (`set-name`); `eth0`, `eth1`... by position when nil.
            public var name: String?
            /// The MAC address QEMU gives the NIC, e.g. `52:54:00:12:34:56`.
            public var macAddress: String?
            /// DHCP for IPv4; on unless static addresses are given.
            public var dhcp4: Bool?
            /// Static addresses with prefix length (`192.168.50.10/24`).
            public var addresses: [String] = []
            /// Default IPv4 gateway.
            public var gateway4: String?
            /// DNS servers.
            public var nameservers: [String] = []
            /// DNS search domains.
            public var searchDomains: [String] = []

            public init(
                name: String? = nil, macAddress: String? = nil, dhcp4: Bool? = nil, addresses: [String] = [],
                gateway4: String? = nil, nameservers: [String] = [], searchDomains: [String] = []
            ) {
                self.name = name
                self.macAddress = macAddress
                self.dhcp4 = dhcp4
                self.addresses = addresses
                self.gateway4 = gateway4
                self.nameservers = nameservers
                self.searchDomains = searchDomains
            }

            enum CodingKeys: String, CodingKey {
                case name, dhcp4, addresses, gateway4, nameservers
                case macAddress = "mac_address"
                case searchDomains = "search_domains"
            }

            public init(from decoder: any Decoder) throws {
                let c = try decoder.container(keyedBy: CodingKeys.self)
                name = try c.decodeIfPresent(String.self, forKey: .name)
                macAddress = try c.decodeIfPresent(String.self, forKey: .macAddress)
                dhcp4 = try c.decodeIfPresent(Bool.self, forKey: .dhcp4)
                addresses = try c.decodeIfPresent([String].self, forKey: .addresses) ?? []
                gateway4 = try c.decodeIfPresent(String.self, forKey: .gateway4)
                nameservers = try c.decodeIfPresent([String].self, forKey: .nameservers) ?? []
                searchDomains = try c.decodeIfPresent([String].self, forKey: .searchDomains) ?? []
            }
        }
    }
}
