import Foundation

/// What `nimbus seed` asks for, as plain values: the files given (cloud-localds's form) and the flags
/// that build an `InstanceConfig` without any file. The command parses; this type does the work, so
/// tests reach it without a process.
public struct SeedRequest: Sendable {
    /// The kind of output.
    public enum Format: String, Sendable, CaseIterable {
        /// A cloud-init NoCloud `cidata` ISO.
        case nocloud
        /// An Ignition spec 3.x JSON config, of the lowest version that expresses it.
        case ignition
        /// An OpenStack config drive v2 ISO (`config-2`), made from the NoCloud files.
        case configDrive = "configdrive"
        /// An OVF environment ISO (`OVF-TRANSPORT`, `ovf-env.xml`), made from the NoCloud files.
        case ovf
    }

    public var format: Format = .nocloud
    /// Path of the user-data (`-` for stdin).
    public var userDataPath: String?
    public var metaDataPath: String?
    public var networkConfigPath: String?
    public var vendorDataPath: String?
    public var hostname: String?
    /// Paths of `.pub` files; their keys go to `user` or, without one, to the image's default user.
    public var sshKeyPaths: [String] = []
    public var user: String?
    public var locale: String?
    public var timezone: String?
    /// MAC address of the first NIC: network-config then gives it DHCP by that address.
    public var macAddress: String?

    public init() {}

    /// The result: a seed or an Ignition config, and the warnings to show.
    public enum Output: Sendable {
        case nocloud(NoCloudSeed)
        case ignition(IgnitionConfig)
        /// The NoCloud files, carried as a config drive.
        case configDrive(NoCloudSeed)
        /// The NoCloud files, carried as an OVF environment.
        case ovf(NoCloudSeed)

        /// Remarks for stderr.
        public var warnings: [String] {
            switch self {
            case .nocloud(let seed), .configDrive(let seed), .ovf(let seed): seed.warnings
            case .ignition: []
            }
        }

        /// What `--print` shows: each file under a header, or the JSON.
        public var printed: String {
            switch self {
            case .ignition(let config):
                return config.json
            case .ovf(let seed):
                return (try? seed.ovfEnvironmentXML()) ?? ""
            case .configDrive(let seed):
                let files = (try? seed.configDrive(timestamp: Date()).files) ?? []
                return Self.printed(
                    files.map { file in
                        guard case .bytes(let bytes) = file.contents else { return (file.name, []) }
                        return (file.name, bytes)
                    })
            case .nocloud(let seed):
                return Self.printed(seed.files)
            }
        }

        /// Each file under a header; binary data named, not shown.
        static func printed(_ files: [(name: String, contents: [UInt8])]) -> String {
            files.map { name, contents in
                let text =
                    UserData.classify(contents) == .gzip || String(validating: contents, as: UTF8.self) == nil
                    ? "<\(contents.count) bytes of binary data>\n"
                    : String(decoding: contents, as: UTF8.self)
                return "# ---- \(name) ----\n" + text + (text.hasSuffix("\n") ? "" : "\n")
            }.joined()
        }

        /// Writes the ISO or the JSON to `url`, atomically: on error nothing is left there. `durable` as in
        /// `NoCloudSeed.writeISO`.
        public func write(to url: URL, timestamp: Date, durable: Bool = true) throws(SeedError) {
            switch self {
            case .nocloud(let seed):
                try seed.writeISO(to: url, timestamp: timestamp, durable: durable)
            case .configDrive(let seed):
                try seed.writeISO(to: url, timestamp: timestamp, durable: durable, volume: .configDrive)
            case .ovf(let seed):
                try seed.writeISO(to: url, timestamp: timestamp, durable: durable, volume: .ovf)
            case .ignition(let config):
                try SeedFiles.write(Data(config.json.utf8), to: url, durable: durable)
            }
        }
    }

    /// Reads and checks every input, then renders. Nothing is written here.
    public func render() throws(SeedError) -> Output {
        var config = InstanceConfig()
        if let hostname {
            try Self.checkHostname(hostname)
            let parts = hostname.split(separator: ".", maxSplits: 1)
            config.hostname = String(parts[0])
            if parts.count > 1 { config.fqdn = hostname }
        }
        config.locale = locale
        config.timezone = timezone
        if let timezone, timezone.isEmpty || timezone.contains(" ") || timezone.hasPrefix("/") {
            throw .invalidValue("time zone \"\(timezone)\" is not a tz database name like Europe/Paris or UTC")
        }
        if let macAddress {
            let octets = macAddress.split(separator: ":", omittingEmptySubsequences: false)
            guard octets.count == 6, octets.allSatisfy({ $0.count == 2 && UInt8($0, radix: 16) != nil }) else {
                throw .invalidValue("MAC address \"\(macAddress)\" is not six hex pairs like 52:54:00:12:34:56")
            }
            config.network = InstanceConfig.Network(interfaces: [.init(macAddress: macAddress)])
        }
        var keys: [String] = []
        for path in sshKeyPaths {
            let file = try UserFile.read(path)
            for line in String(decoding: file.bytes, as: UTF8.self).split(whereSeparator: \.isNewline)
            where !line.trimmingCharacters(in: .whitespaces).isEmpty && !line.hasPrefix("#") {
                keys.append(try SSHPublicKey.validate(String(line), source: path))
            }
        }
        if let user {
            try Self.checkUserName(user)
            config.users = [InstanceConfig.User(name: user, sshAuthorizedKeys: keys)]
        } else {
            config.sshAuthorizedKeys = keys
        }

        let userData = try userDataPath.map { path throws(SeedError) in
            let file = try UserFile.read(path)
            return try UserData(bytes: file.bytes, source: file.source)
        }
        switch format {
        case .ignition:
            for (flag, path) in [
                ("META-DATA", metaDataPath), ("--network-config", networkConfigPath), ("--vendor-data", vendorDataPath),
            ]
            where path != nil {
                throw .invalidValue("\(flag) has no Ignition equivalent: leave it out with --format ignition")
            }
            return .ignition(try IgnitionConfig(config: config, userData: userData))
        case .nocloud, .configDrive, .ovf:
            let seed = try NoCloudSeed(
                config: config, name: config.hostname, userData: userData,
                metaData: try metaDataPath.map { path throws(SeedError) in try UserFile.read(path) },
                vendorData: try vendorDataPath.map { path throws(SeedError) in try UserFile.read(path) },
                networkConfig: try networkConfigPath.map { path throws(SeedError) in try UserFile.read(path) })
            switch format {
            case .configDrive:
                _ = try seed.configDrive(timestamp: Date())
                return .configDrive(seed)
            case .ovf:
                _ = try seed.ovfEnvironmentXML()
                return .ovf(seed)
            default:
                return .nocloud(seed)
            }
        }
    }

    /// RFC 1123 labels: a-z, 0-9 and '-', not at either end, 63 characters at most each.
    static func checkHostname(_ name: String) throws(SeedError) {
        let labels = name.split(separator: ".", omittingEmptySubsequences: false)
        let valid =
            !name.isEmpty && name.count <= 253
            && labels.allSatisfy { label in
                !label.isEmpty && label.count <= 63 && !label.hasPrefix("-") && !label.hasSuffix("-")
                    && label.allSatisfy { ($0.isASCII && ($0.isLetter || $0.isNumber)) || $0 == "-" }
            }
        guard valid else {
            throw .invalidValue(
                "host name \"\(name)\" is not valid: use letters, digits and '-' in dot-separated labels (like web-1.example.test)"
            )
        }
    }

    static func checkUserName(_ name: String) throws(SeedError) {
        let valid =
            !name.isEmpty && name.count <= 32 && name.first.map { $0 == "_" || ($0.isASCII && $0.isLowercase) } == true
            && name.allSatisfy { ($0.isASCII && ($0.isLowercase || $0.isNumber)) || $0 == "_" || $0 == "-" }
        guard valid else {
            throw .invalidValue(
                "user name \"\(name)\" is not valid: start with a-z or '_', then a-z, 0-9, '_' or '-' (at most 32)")
        }
    }
}
