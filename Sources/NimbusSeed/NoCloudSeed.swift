import Crypto
import Foundation
import NimbusISO9660
import Yams

/// The four files of a cloud-init NoCloud seed, rendered from an `InstanceConfig` and, optionally, the
/// user's own user-data, and the `cidata` ISO that carries them.
///
/// - `vendor-data`: Nimbus's defaults (its user and key, host keys, `growpart`, `manage_etc_hosts`, no
///   password logins), so that `user-data` stays the user's, as Multipass does.
/// - `user-data`: what the user asked for. A user `#cloud-config` is kept byte for byte when there is
///   nothing to add to it, else merged with the config's keys (see
///   `CloudConfigMerge`); when it defines `users`, Nimbus's default user is appended to that list, because
///   cloud-init takes `users` from user-data over vendor-data whole. Any other kind (`#!`, `#include`,
///   jinja, MIME, gzip) is written untouched, and the config's own keys then go into vendor-data.
/// - `meta-data`: `instance-id` (the instance name and a digest of the other three files, so it changes
///   exactly when the seed must be applied again) and `local-hostname`.
/// - `network-config`: always written; version 2 with MAC-matched NICs, or, when no NIC is given, a
///   document with no device so that cloud-init uses its fallback (DHCP on the first NIC).
public struct NoCloudSeed: Sendable {
    /// `instance-id` and `local-hostname`, YAML.
    public var metaData: [UInt8]
    /// The rendered or passed-through user-data.
    public var userData: [UInt8]
    /// Nimbus's defaults, or the user's own vendor-data.
    public var vendorData: [UInt8]
    /// network-config version 2.
    public var networkConfig: [UInt8]
    /// Non-fatal remarks on the user's input (unknown keys...), to show on stderr.
    public var warnings: [String]
    /// The `instance-id` in meta-data (nil when the user gave their own meta-data).
    public var instanceID: String?

    /// Renders a seed.
    ///
    /// - Parameters:
    ///   - config: the instance's personality.
    ///   - name: the instance's name, the first part of `instance-id` and the default `local-hostname`.
    ///   - userData: the user's own user-data, if any.
    ///   - metaData, vendorData, networkConfig: files given as they are (cloud-localds's options); they
    ///     replace what Nimbus would render. YAML ones are checked first.
    ///   - generation: the root disk this seed is for (0 for the first, then one more per upgrade): part of the
    ///     instance-id, so a new root with the same personality gets a new one and cloud-init runs on it as on
    ///     a first boot.
    ///   - salt: anything else that must give the same personality another instance-id (a reseed's time), so
    ///     cloud-init runs again as on a first boot on the same root.
    public init(
        config: InstanceConfig, name: String? = nil, userData: UserData? = nil, metaData: UserFile? = nil,
        vendorData: UserFile? = nil, networkConfig: UserFile? = nil, generation: Int = 0, salt: String? = nil
    ) throws(SeedError) {
        var warnings = userData?.warnings ?? []
        let asked = CloudConfigRenderer.userPairs(config)
        var vendorPairs = CloudConfigRenderer.vendorPairs(config)

        if let userData, userData.kind != .cloudConfig {
            self.userData = userData.bytes
            // The user's document is opaque: what the config asks for rides in vendor-data instead.
            vendorPairs = Self.combine(vendorPairs, asked)
        } else if let userData, asked.isEmpty, config.defaultUser == nil || !Self.hasUsers(userData) {
            // Nothing to merge: the user's #cloud-config reaches the guest as written, comments and all.
            self.userData = userData.bytes
        } else {
            var document = CloudConfigMerge.merge(
                user: userData?.cloudConfig ?? YAML.mapping(nodePairs: []), nimbus: asked)
            if let user = config.defaultUser, case .mapping(var mapping) = document,
                case .sequence(let users)? = mapping[YAML.string("users")]
            {
                mapping[YAML.string("users")] = YAML.sequence(Array(users) + [CloudConfigRenderer.userNode(user)])
                document = .mapping(mapping)
            }
            self.userData = Array(try YAML.emit(document, header: "#cloud-config").utf8)
        }

        if let vendorData {
            try vendorData.checkYAMLIfCloudConfig()
            self.vendorData = vendorData.bytes
        } else {
            self.vendorData = Array(try YAML.emit(YAML.mapping(vendorPairs), header: "#cloud-config").utf8)
        }
        if let networkConfig {
            try networkConfig.checkMapping()
            self.networkConfig = networkConfig.bytes
        } else {
            self.networkConfig =
                config.network.interfaces.isEmpty
                ? Array(CloudConfigRenderer.fallbackNetworkConfig.utf8)
                : Array(try YAML.emit(CloudConfigRenderer.networkNode(config.network)).utf8)
        }

        if let metaData {
            try metaData.checkMapping()
            self.metaData = metaData.bytes
            instanceID = nil
        } else {
            // The user's own `hostname` wins in user-data; meta-data says the same, so the two never disagree.
            let userHostname: String? = {
                guard case .mapping(let mapping)? = userData?.cloudConfig else { return nil }
                return mapping[YAML.string("hostname")]?.string
            }()
            let hostname = userHostname ?? config.hostname ?? name
            var digest = SHA256()
            for part in [Array((name ?? "").utf8), self.userData, self.vendorData, self.networkConfig] {
                digest.update(data: withUnsafeBytes(of: UInt64(part.count).bigEndian) { Array($0) })
                digest.update(data: part)
            }
            // Generation 0 hashes nothing more, so the seeds of instances launched before upgrades keep their id.
            if generation > 0 { digest.update(data: Array("generation \(generation)".utf8)) }
            if let salt { digest.update(data: Array("salt \(salt)".utf8)) }
            let hex = digest.finalize().prefix(8).map { byte in
                (byte < 16 ? "0" : "") + String(byte, radix: 16)
            }.joined()
            let id = "iid-" + (name.map { $0 + "-" } ?? "") + hex
            instanceID = id
            self.metaData = Array(
                try YAML.emit(
                    YAML.mapping([
                        ("instance-id", YAML.string(id)),
                        ("local-hostname", hostname.map(YAML.string)),
                    ])
                ).utf8)
        }
        if config.hostname == nil, name == nil, metaData == nil, !Self.hasHostname(userData) {
            warnings.append("no hostname given: the guest keeps the image's own")
        }
        self.warnings = warnings
    }

    static func hasHostname(_ userData: UserData?) -> Bool {
        guard case .mapping(let mapping)? = userData?.cloudConfig else { return false }
        return mapping[YAML.string("hostname")] != nil || mapping[YAML.string("fqdn")] != nil
    }

    static func hasUsers(_ userData: UserData) -> Bool {
        guard case .mapping(let mapping)? = userData.cloudConfig else { return false }
        return mapping[YAML.string("users")] != nil
    }

    /// Appends `extra` to `base`: new keys added, lists appended, `base` kept on a conflict.
    static func combine(_ base: [(String, Node?)], _ extra: [(String, Node?)]) -> [(String, Node?)] {
        guard case .mapping(let merged) = CloudConfigMerge.merge(user: YAML.mapping(base), nimbus: extra) else {
            return base
        }
        return merged.map { ($0.key.string ?? "", $0.value) }
    }

    /// The files by their NoCloud names, in the order `--print` shows them.
    public var files: [(name: String, contents: [UInt8])] {
        [
            ("meta-data", metaData), ("user-data", userData), ("vendor-data", vendorData),
            ("network-config", networkConfig),
        ]
    }

    /// The `cidata` volume holding the four files, every date set to `timestamp`.
    public func isoImage(timestamp: Date) -> ISO9660Image {
        ISO9660Image(
            volumeIdentifier: "cidata", timestamp: timestamp,
            files: files.map { ISO9660Image.File(name: $0.name, contents: $0.contents) })
    }

    /// Writes the ISO to `url` atomically (temporary file in the same folder, renamed into place): on any
    /// error nothing is left. `durable` also fsyncs the file and its folder, so the seed survives a host
    /// crash (what an instance folder needs); `nimbus seed`, like cloud-localds, leaves that to the OS.
    /// `private` makes it readable by its owner only (an instance's seed: user-data often holds secrets).
    /// `volume` chooses the datasource the ISO is for: NoCloud's `cidata`, or the same files as a config drive
    /// or an OVF environment (PlatformSeeds.swift).
    public func writeISO(
        to url: URL, timestamp: Date, durable: Bool = true, private: Bool = false, volume: SeedVolume = .nocloud
    ) throws(SeedError) {
        let image =
            switch volume {
            case .nocloud: isoImage(timestamp: timestamp)
            case .configDrive: try configDrive(timestamp: timestamp)
            case .ovf: try ovfEnvironment(timestamp: timestamp)
            }
        try SeedFiles.write(image, to: url, durable: durable, private: `private`)
    }
}

/// The volume a seed ISO is, by the cloud-init datasource that reads it.
public enum SeedVolume: Sendable {
    /// `cidata`: NoCloud.
    case nocloud
    /// `config-2`: ConfigDrive (OpenStack).
    case configDrive
    /// `OVF-TRANSPORT`: OVF (VMware's ISO transport).
    case ovf
}

/// A file given by the user as it is (meta-data, vendor-data, network-config), with its name for errors.
public struct UserFile: Sendable {
    public var bytes: [UInt8]
    public var source: String

    public init(bytes: [UInt8], source: String) {
        self.bytes = bytes
        self.source = source
    }

    /// Reads `path` (`-` is stdin).
    public static func read(_ path: String) throws(SeedError) -> UserFile {
        if path == "-" {
            return UserFile(bytes: Array(FileHandle.standardInput.readDataToEndOfFile()), source: "<stdin>")
        }
        guard let bytes = readFile(path) else {
            let exists = FileManager.default.fileExists(atPath: path)
            throw .io(path: path, reason: exists ? "cannot read it (is it a readable file?)" : "no such file")
        }
        return UserFile(bytes: bytes, source: path)
    }

    /// The whole file (or pipe, as `<(...)` gives), with POSIX calls: `Data(contentsOf: URL(...))` costs
    /// more on first use than the read.
    static func readFile(_ path: String) -> [UInt8]? {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var status = stat()
        let size = fstat(fd, &status) == 0 && status.st_size > 0 ? Int(status.st_size) : 0
        var bytes: [UInt8] = []
        bytes.reserveCapacity(size)
        // One read (and one at EOF) for a regular file; a page at a time for a pipe.
        var chunk = [UInt8](repeating: 0, count: max(4096, min(size + 1, 1 << 20)))
        while true {
            let count = chunk.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
            if count < 0, errno == EINTR { continue }
            if count < 0 { return nil }
            if count == 0 { return bytes }
            bytes.append(contentsOf: chunk[..<count])
        }
    }

    /// A YAML mapping (meta-data, network-config) or an error naming file:line:column.
    func checkMapping() throws(SeedError) {
        let node = try YAML.parse(String(decoding: bytes, as: UTF8.self), file: source)
        guard let node else { return }
        guard case .mapping = node else {
            throw .invalidDocument(
                file: source, line: node.mark?.line ?? 1, column: node.mark?.column ?? 1,
                problem: "must be a YAML mapping of keys, not \(YAML.kind(node))")
        }
    }

    func checkYAMLIfCloudConfig() throws(SeedError) {
        if UserData.classify(bytes) == .cloudConfig { _ = try UserData(bytes: bytes, source: source) }
    }
}
