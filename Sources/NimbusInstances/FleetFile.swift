import Foundation
import NimbusCore
import NimbusMachines
import NimbusSeed
import Yams

/// A declarative file of instances for `nimbus apply -f fleet.yaml`.
///
/// ```yaml
/// defaults:            # optional, applied to every instance
///   image: debian:12
///   memory: 1G
/// instances:
///   - name: web
///     cpus: 2
///     disk: 10G
///     forwards: ["8080:80"]
///     mounts: ["./site:/srv/site"]      # relative to the fleet file
///     mount-type: virtiofs              # or 9p; default: virtiofs where virtiofsd runs
///     cloud-init: |                     # inline user-data ...
///       #cloud-config
///       packages: [nginx]
///   - name: db
///     cloud-init-file: db.yaml          # ... or a file, relative to the fleet file
///     volumes: ["pgdata:/var/lib/postgresql:20G"]   # NAME:PATH[:SIZE], as --volume
///   - name: edge
///     image: fedora-coreos:stable
///     ignition-file: edge.ign           # your own Ignition config (CoreOS), as `launch --ignition`
///     networks: [back, "front:192.168.50.10"]   # as `launch --network`
///     default-route: front              # as `launch --default-route` (a network with nat)
///   - name: far
///     driver: libvirt                   # as `launch --driver/--connect` (default from config.yaml)
///     connect: qemu+ssh://admin@host2/system
/// networks:            # optional: made by `apply` when missing (needs root)
///   back: {}                            # a free /24, no NAT
///   front: {subnet: 192.168.50.0/24, nat: true}
/// ```
public struct FleetFile: Sendable {
    /// One instance's entry; every key but `name` is optional.
    public struct Entry: Codable, Sendable, Equatable {
        /// The instance's name; required in each `instances:` entry, ignored under `defaults:`.
        public var name: String?
        /// The image reference (`debian:12`); config.yaml's `image` when nil.
        public var image: String?
        /// The number of virtual CPUs; config.yaml's `cpus` when nil.
        public var cpus: Int?
        /// The guest's memory, a size like `512M` or `2G` (binary units); config.yaml's `memory` when nil.
        public var memory: String?
        /// The disk's virtual size, like `10G`; config.yaml's `disk` when nil.
        public var disk: String?
        /// The guest's hostname; the instance name when nil. Never taken from `defaults:`.
        public var hostname: String?
        /// The guest's system locale (`en_US.UTF-8`); the image's own when nil.
        public var locale: String?
        /// The guest's time zone from the tz database (`Europe/Paris`); the image's own when nil.
        public var timezone: String?
        /// Host ports forwarded to the guest, as `launch --forward` takes them (`8080:80`, `5353:53/udp`);
        /// never taken from `defaults:`.
        public var forwards: [String]?
        /// Host folders shared into the guest, as `HOST:GUEST`; a relative HOST is relative to the fleet file.
        public var mounts: [String]?
        /// How `mounts` reach the guest (`mount-type`): `virtiofs`, `9p` or `auto`; `auto` when nil.
        public var mountType: String?
        /// A scratch disk emptied at every start, `SIZE[:MOUNTPOINT]` as `launch --ephemeral`; mounted at
        /// `/mnt` when no mount point is given.
        public var ephemeral: String?
        /// Inline cloud-init user-data (`cloud-init`); wins over `cloud-init-file`.
        public var cloudInit: String?
        /// A file of cloud-init user-data (`cloud-init-file`), relative to the fleet file.
        public var cloudInitFile: String?
        /// An Ignition config for CoreOS images (`ignition-file`), relative to the fleet file, as
        /// `launch --ignition`.
        public var ignitionFile: String?
        /// OpenSSH public key files (`ssh-keys`) authorised for the default user, relative to the fleet
        /// file; those under `defaults:` are added to each entry's.
        public var sshKeys: [String]?
        /// Host networks to join, each `NAME` or `NAME:ADDRESS`, as `launch --network`.
        public var networks: [String]?
        /// `qemu` or `libvirt`, as `launch --driver`; config.yaml's `driver` when nil.
        public var driver: String?
        /// The libvirt daemon's URI (`qemu+ssh://admin@host2/system`), as `launch --connect`; the
        /// driver's default when nil.
        public var connect: String?
        /// The network (one with NAT) the guest's default route goes through (`default-route`), as
        /// `launch --default-route`.
        public var defaultRoute: String?
        /// Data volumes, each `NAME:PATH` or `NAME:PATH:SIZE` (made at that size when missing), as
        /// `launch --volume`; never taken from `defaults:` (a volume serves one instance at a time).
        public var volumes: [String]?

        enum CodingKeys: String, CodingKey {
            case name, image, cpus, memory, disk, hostname, locale, timezone, forwards, mounts, ephemeral, driver,
                connect
            case mountType = "mount-type"
            case cloudInit = "cloud-init"
            case cloudInitFile = "cloud-init-file"
            case ignitionFile = "ignition-file"
            case sshKeys = "ssh-keys"
            case networks, volumes
            case defaultRoute = "default-route"
        }

        /// `self` with the keys it lacks taken from `defaults`.
        func merged(over defaults: Entry) -> Entry {
            Entry(
                name: name, image: image ?? defaults.image, cpus: cpus ?? defaults.cpus,
                memory: memory ?? defaults.memory, disk: disk ?? defaults.disk, hostname: hostname,
                locale: locale ?? defaults.locale, timezone: timezone ?? defaults.timezone,
                forwards: forwards, mounts: mounts ?? defaults.mounts, mountType: mountType ?? defaults.mountType,
                ephemeral: ephemeral ?? defaults.ephemeral,
                cloudInit: cloudInit ?? (cloudInitFile == nil ? defaults.cloudInit : nil),
                cloudInitFile: cloudInitFile ?? (cloudInit == nil ? defaults.cloudInitFile : nil),
                ignitionFile: ignitionFile ?? defaults.ignitionFile,
                sshKeys: (defaults.sshKeys ?? []) + (sshKeys ?? []), networks: networks ?? defaults.networks,
                driver: driver ?? defaults.driver, connect: connect ?? (driver == nil ? defaults.connect : nil),
                defaultRoute: defaultRoute ?? (networks == nil ? defaults.defaultRoute : nil), volumes: volumes)
        }
    }

    /// A network of the file's `networks:` mapping.
    public struct Network: Codable, Sendable, Equatable {
        /// The network's IPv4 subnet (`192.168.50.0/24`); a free private /24 when nil.
        public var subnet: String?
        /// Whether traffic to the outside is masqueraded (`--nat`); false when nil.
        public var nat: Bool?
    }

    struct Document: Codable {
        var defaults: Entry?
        var instances: [Entry]
        var networks: [String: Network]?
    }

    /// The file's absolute path: instances launched from it remember it, so `--prune` knows its own.
    public let url: URL
    /// The instances, each a complete spec.
    public let specs: [InstanceSpec]
    /// The networks the file declares, by name, with their subnets checked.
    public let networks: [(name: String, subnet: IPv4Subnet?, nat: Bool)]
    /// For each instance, the sizes its `volumes:` give to volumes to be made when missing.
    public let volumeSizes: [InstanceName: [String: ByteSize]]

    /// Reads and validates the whole file before anything is launched; errors name the file, and the
    /// instance and key at fault.
    public init(url: URL, config: NimbusConfig) throws(NimbusError) {
        let absolute = url.standardizedFileURL
        self.url = absolute
        let text: String
        do {
            text = try String(contentsOf: url, encoding: .utf8)
        } catch {
            throw NimbusError(.invalidArgument, "cannot read the fleet file \(url.path): check the path", cause: error)
        }
        let document: Document
        do {
            document = try YAMLDecoder().decode(Document.self, from: text)
        } catch let error as YamlError {
            throw NimbusError(.invalidArgument, "\(url.path): \(error)", cause: error)
        } catch let error as DecodingError {
            throw NimbusError(.invalidArgument, "\(url.path): \(NimbusConfig.describe(error))", cause: error)
        } catch {
            throw NimbusError(.invalidArgument, "\(url.path) is not a fleet file", cause: error)
        }
        var networks: [(name: String, subnet: IPv4Subnet?, nat: Bool)] = []
        for (name, network) in (document.networks ?? [:]).sorted(by: { $0.key < $1.key }) {
            let label = "\(url.lastPathComponent): networks.\(name)"
            try Self.within(label) { () throws(NimbusError) in try NetworkSpec.checkName(name) }
            let subnet = try Self.within(label) { () throws(NimbusError) -> IPv4Subnet? in
                guard let text = network.subnet else { return nil }
                return try IPv4Subnet(parsing: text, what: "subnet")
            }
            networks.append((name, subnet, network.nat ?? false))
        }
        self.networks = networks
        let base = url.deletingLastPathComponent()
        var specs: [InstanceSpec] = []
        var volumeSizes: [InstanceName: [String: ByteSize]] = [:]
        var seen: Set<String> = []
        for (index, raw) in document.instances.enumerated() {
            let entry = raw.merged(over: document.defaults ?? Entry())
            let label = "\(url.lastPathComponent): instances[\(index)]"
            guard let rawName = entry.name else {
                throw NimbusError(.invalidArgument, "\(label) has no name: every instance needs `name:`")
            }
            let name = try Self.within(label) { () throws(NimbusError) in try InstanceName(rawName) }
            guard seen.insert(rawName).inserted else {
                throw NimbusError(.invalidArgument, "\(label): the name \"\(rawName)\" is used twice")
            }
            var sizes: [String: ByteSize] = [:]
            specs.append(
                try Self.within("\(label) (\(rawName))") { () throws(NimbusError) in
                    try Self.spec(
                        name: name, entry: entry, config: config, base: base, fleet: absolute.path, sizes: &sizes)
                })
            if !sizes.isEmpty { volumeSizes[name] = sizes }
        }
        self.specs = specs
        self.volumeSizes = volumeSizes
    }

    static func spec(
        name: InstanceName, entry: Entry, config: NimbusConfig, base: URL, fleet: String,
        sizes: inout [String: ByteSize]
    ) throws(NimbusError) -> InstanceSpec {
        var spec = InstanceSpec(name: name, image: entry.image, defaults: config)
        for text in entry.volumes ?? [] {
            let (attachment, size) = try VolumeAttachment.parse(text, what: "volumes")
            spec.volumes.append(attachment)
            if let size { sizes[attachment.volume] = size }
        }
        if let cpus = entry.cpus { spec.cpus = cpus }
        if let memory = entry.memory { spec.memory = try ByteSize(parsing: memory, what: "memory") }
        if let disk = entry.disk { spec.disk = try ByteSize(parsing: disk, what: "disk") }
        // Another driver than config.yaml's does not take its daemon and pool.
        if let driver = entry.driver, driver != spec.driver.name {
            spec.driver = try DriverChoice(name: driver, connect: entry.connect, pool: nil)
        } else if let connect = entry.connect {
            spec.driver = try DriverChoice(kind: spec.driver.kind, connect: connect, pool: spec.driver.pool)
        }
        spec.hostname = entry.hostname
        spec.networks = try (entry.networks ?? []).map { (text: String) throws(NimbusError) in
            try NetworkAttachment(parsing: text, what: "networks")
        }
        if let network = entry.defaultRoute {
            try NetworkAttachment.route(&spec.networks, via: network, option: "default-route")
        }
        spec.locale = entry.locale
        spec.timezone = entry.timezone
        spec.forwards = try (entry.forwards ?? []).map { (f: String) throws(NimbusError) in
            try MachineConfig.PortForward(parsing: f)
        }
        spec.mounts = try (entry.mounts ?? []).map { (m: String) throws(NimbusError) in
            try Mount(parsing: m, relativeTo: base)
        }
        if let text = entry.mountType {
            guard let type = MountType(rawValue: text) else {
                throw NimbusError(
                    .invalidArgument,
                    "mount-type \"\(text)\" is not one of \(MountType.allCases.map(\.rawValue).joined(separator: ", "))"
                )
            }
            spec.mountType = type
        }
        spec.ephemeral = try entry.ephemeral.map { (e: String) throws(NimbusError) in try EphemeralDisk(parsing: e) }
        spec.fleet = fleet
        if let inline = entry.cloudInit {
            spec.userData = inline
        } else if let file = entry.cloudInitFile {
            let path = URL(fileURLWithPath: file, relativeTo: base).standardizedFileURL
            guard let text = try? String(contentsOf: path, encoding: .utf8) else {
                throw NimbusError(.invalidArgument, "cloud-init-file \(path.path) cannot be read")
            }
            spec.userData = text
        }
        if let file = entry.ignitionFile {
            do {
                let url = URL(fileURLWithPath: file, relativeTo: base).standardizedFileURL
                spec.ignition = try UserIgnition.read(url, option: "ignition-file").text
            } catch {
                throw error.nimbusError
            }
        }
        spec.sshAuthorizedKeys = try (entry.sshKeys ?? []).map { (k: String) throws(NimbusError) in
            try readPublicKey(URL(fileURLWithPath: (k as NSString).expandingTildeInPath, relativeTo: base))
        }
        return spec
    }

    static func within<T>(_ label: String, _ body: () throws(NimbusError) -> T) throws(NimbusError) -> T {
        do {
            return try body()
        } catch {
            throw NimbusError(error.code, "\(label): \(error.message)", cause: error.cause)
        }
    }
}

/// Reads one OpenSSH public key file (`--ssh-key FILE.pub`), checking it looks like one.
public func readPublicKey(_ url: URL) throws(NimbusError) -> String {
    guard let text = try? String(contentsOf: url, encoding: .utf8) else {
        throw NimbusError(.invalidArgument, "cannot read the SSH key \(url.path): check the path and its permissions")
    }
    let line =
        text.split(whereSeparator: \.isNewline).first.map(String.init)?.trimmingCharacters(in: .whitespaces) ?? ""
    let kinds = ["ssh-ed25519", "ssh-rsa", "ecdsa-sha2-", "sk-ssh-ed25519", "sk-ecdsa-sha2-", "ssh-dss"]
    guard kinds.contains(where: line.hasPrefix), line.split(separator: " ").count >= 2 else {
        throw NimbusError(
            .invalidArgument,
            "\(url.path) is not an OpenSSH public key (expected a line like `ssh-ed25519 AAAA… comment`): pass the .pub file"
        )
    }
    return line
}
