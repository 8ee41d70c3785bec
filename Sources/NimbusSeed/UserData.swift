import Foundation
import Yams

/// User-supplied user-data, classified the way cloud-init does by its first bytes. Only `#cloud-config`
/// is parsed and merged; every other kind reaches the guest untouched.
///
/// Not `Sendable`: it holds a Yams `Node`, whose tags are classes. Build it where it is used.
public struct UserData {
    /// What the document is.
    public enum Kind: String, Sendable {
        case cloudConfig = "cloud-config"
        case script = "shell script"
        case include = "include file"
        case jinjaTemplate = "jinja template"
        case mimeMultipart = "MIME multipart"
        case gzip = "gzip"
        case boothook = "cloud-boothook"
        case partHandler = "part-handler"
        case cloudConfigArchive = "cloud-config-archive"
        case unknown = "unrecognised"
    }

    /// The kind, from the first bytes.
    public let kind: Kind
    /// The bytes as given.
    public let bytes: [UInt8]
    /// Where they came from (file name or `-`), for messages.
    public let source: String
    /// The parsed mapping, for `#cloud-config`.
    public let cloudConfig: Node?
    /// Things worth telling the user that do not stop the seed (unknown keys, an unrecognised kind).
    public let warnings: [String]

    /// Classifies, parses and validates `bytes`; an invalid `#cloud-config` is an error naming
    /// `source:line:column`.
    public init(bytes: [UInt8], source: String) throws(SeedError) {
        self.bytes = bytes
        self.source = source
        kind = Self.classify(bytes)
        guard kind == .cloudConfig else {
            cloudConfig = nil
            warnings =
                kind == .unknown
                ? [
                    "\(source) is not a format cloud-init recognises (#cloud-config, #!, #include, MIME, gzip...): it is passed on unchanged and cloud-init will likely ignore it"
                ]
                : []
            return
        }
        let text = String(decoding: bytes, as: UTF8.self)
        guard let node = try YAML.parse(text, file: source) else {
            cloudConfig = YAML.mapping(nodePairs: [])
            warnings = []
            return
        }
        guard case .mapping(let mapping) = node else {
            throw .invalidDocument(
                file: source, line: node.mark?.line ?? 1, column: node.mark?.column ?? 1,
                problem: "#cloud-config must be a mapping of keys (like `hostname: web`), not \(YAML.kind(node))")
        }
        var warnings: [String] = []
        for (key, value) in mapping {
            guard let name = key.string else {
                throw .invalidDocument(
                    file: source, line: key.mark?.line ?? 1, column: key.mark?.column ?? 1,
                    problem: "top-level keys must be strings")
            }
            try CloudConfigSchema.check(key: name, value: value, file: source)
            if !CloudConfigSchema.knownKeys.contains(name) {
                let location = key.mark.map { "\(source):\($0.line):\($0.column)" } ?? source
                warnings.append(
                    "\(location): unknown cloud-config key `\(name)` is passed on; cloud-init may ignore it")
            }
        }
        cloudConfig = node
        self.warnings = warnings
    }

    static func classify(_ bytes: [UInt8]) -> Kind {
        if bytes.starts(with: [0x1F, 0x8B]) { return .gzip }
        let head = String(decoding: bytes.prefix(64), as: UTF8.self)
        let firstLine =
            head.split(separator: "\n", maxSplits: 1, omittingEmptySubsequences: false).first.map(String.init) ?? ""
        // `trimmingCharacters(in: .whitespaces)` then without "\r", in Swift rather than through NSString,
        // whose first use costs more than the rest of the classification.
        let trimmed = String(
            String.UnicodeScalarView(Self.trimmingWhitespace(firstLine.unicodeScalars).filter { $0 != "\r" }))
        if trimmed.hasPrefix("#cloud-config-archive") { return .cloudConfigArchive }
        if trimmed.hasPrefix("#cloud-config") { return .cloudConfig }
        if trimmed.lowercased().hasPrefix("## template:") { return .jinjaTemplate }
        if trimmed.hasPrefix("#!") { return .script }
        if trimmed.hasPrefix("#include") { return .include }
        if trimmed.hasPrefix("#cloud-boothook") { return .boothook }
        if trimmed.hasPrefix("#part-handler") { return .partHandler }
        let lower = head.lowercased()
        if lower.hasPrefix("content-type: multipart") || lower.hasPrefix("mime-version:") { return .mimeMultipart }
        return .unknown
    }

    /// Whether `CharacterSet.whitespaces` holds `scalar`: general category Zs, tab and, in swift-corelibs-
    /// foundation, U+200B ZERO WIDTH SPACE (a test compares the two over every scalar).
    static func isWhitespace(_ scalar: Unicode.Scalar) -> Bool {
        scalar == "\t" || scalar == "\u{200B}" || scalar.properties.generalCategory == .spaceSeparator
    }

    /// `scalars` without leading and trailing members of `CharacterSet.whitespaces`.
    static func trimmingWhitespace(_ scalars: String.UnicodeScalarView) -> Substring.UnicodeScalarView {
        guard let first = scalars.firstIndex(where: { !isWhitespace($0) }),
            let last = scalars.lastIndex(where: { !isWhitespace($0) })
        else { return Substring.UnicodeScalarView() }
        return scalars[first...last]
    }
}

/// The types Nimbus expects for the cloud-config keys it reads or merges, and the keys cloud-init knows.
enum CloudConfigSchema {
    enum Expected {
        case string, sequence, mapping, boolean, booleanOrString, sequenceOfStrings, sequenceOfMappings

        var phrase: String {
            switch self {
            case .string: return "a string"
            case .sequence: return "a list"
            case .mapping: return "a mapping"
            case .boolean: return "true or false"
            case .booleanOrString: return "true, false or a string"
            case .sequenceOfStrings: return "a list of strings"
            case .sequenceOfMappings: return "a list of mappings"
            }
        }

        var example: String {
            switch self {
            case .string: return "`KEY: value`"
            case .sequence, .sequenceOfStrings: return "`KEY:` followed by `- item` lines"
            case .sequenceOfMappings: return "`KEY:` followed by `- name: ...` entries"
            case .mapping: return "`KEY:` followed by indented `name: value` lines"
            case .boolean, .booleanOrString: return "`KEY: true`"
            }
        }
    }

    static let expected: [String: Expected] = [
        "hostname": .string, "fqdn": .string, "locale": .string, "timezone": .string,
        "users": .sequence, "ssh_authorized_keys": .sequenceOfStrings, "packages": .sequence,
        "runcmd": .sequence, "bootcmd": .sequence, "write_files": .sequenceOfMappings, "mounts": .sequence,
        "mount_default_fields": .sequence, "ssh_pwauth": .booleanOrString, "package_update": .boolean,
        "package_upgrade": .boolean, "manage_etc_hosts": .booleanOrString, "swap": .mapping,
        "phone_home": .mapping, "power_state": .mapping, "growpart": .mapping, "ssh_keys": .mapping,
        "preserve_hostname": .boolean, "prefer_fqdn_over_hostname": .boolean,
    ]

    static func check(key: String, value: Node, file: String) throws(SeedError) {
        guard let expected = expected[key] else { return }
        let ok: Bool
        switch (expected, value) {
        case (.string, .scalar): ok = value.null == nil
        case (.sequence, .sequence): ok = true
        case (.sequenceOfStrings, .sequence(let items)):
            ok = items.allSatisfy { if case .scalar = $0 { return true } else { return false } }
        case (.sequenceOfMappings, .sequence(let items)):
            ok = items.allSatisfy { if case .mapping = $0 { return true } else { return false } }
        case (.mapping, .mapping): ok = true
        case (.boolean, .scalar): ok = value.bool != nil
        case (.booleanOrString, .scalar): ok = true
        default: ok = false
        }
        guard ok else {
            let mark = value.mark
            throw .invalidDocument(
                file: file, line: mark?.line ?? 1, column: mark?.column ?? 1,
                problem:
                    "`\(key)` must be \(expected.phrase), not \(YAML.kind(value)): write \(expected.example.replacingOccurrences(of: "KEY", with: key))"
            )
        }
    }

    /// Top-level keys of cloud-init's cloud-config schema (cloud-init 22.4) plus the ones read outside it.
    static let knownKeys: Set<String> = [
        "allow_public_ssh_keys", "ansible", "apk_repos", "apt", "apt_pipelining", "apt_reboot_if_required",
        "apt_update", "apt_upgrade", "authkey_hash", "autoinstall", "bootcmd", "byobu_by_default", "ca-certs",
        "ca_certs", "chef", "chpasswd", "cloud_config_modules", "cloud_final_modules", "cloud_init_modules",
        "create_groups", "device_aliases", "disable_ec2_metadata", "disable_root", "disable_root_opts",
        "disk_setup", "drivers", "fan", "final_message", "fqdn", "fs_setup", "groups", "growpart", "grub-dpkg",
        "grub_dpkg", "hostname", "keyboard", "landscape", "locale", "locale_configfile", "lxd",
        "manage_etc_hosts", "manage_resolv_conf", "mcollective", "migrate", "mount_default_fields", "mounts",
        "ntp", "package_reboot_if_required", "package_update", "package_upgrade", "packages", "password",
        "phone_home", "power_state", "prefer_fqdn_over_hostname", "preserve_hostname", "puppet", "random_seed",
        "reporting", "resize_rootfs", "resolv_conf", "rh_subscription", "rsyslog", "runcmd", "salt_minion",
        "snap", "spacewalk", "ssh", "ssh_authorized_keys", "ssh_deletekeys", "ssh_fp_console_blacklist",
        "ssh_genkeytypes", "ssh_import_id", "ssh_key_console_blacklist", "ssh_keys", "ssh_publish_hostkeys",
        "ssh_pwauth", "ssh_quiet_keygen", "swap", "timezone", "ubuntu_advantage", "updates", "user", "users",
        "vendor_data", "wireguard", "write_files", "yum_repo_dir", "yum_repos", "zypper",
        "merge_how", "merge_type", "system_info", "datasource", "network", "output", "manual_cache_clean",
        "datasource_list", "log_cfgs", "disable_network_activation",
    ]
}
