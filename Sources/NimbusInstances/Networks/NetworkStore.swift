import Foundation
import NimbusCore
import NimbusMachines
import Yams

#if canImport(Glibc)
    import Glibc
#endif

/// The networks on disk: one folder each under `NimbusPaths.networks`, holding `network.yaml`, the
/// network's lock, its driver's files (dnsmasq's), and its hosts.
///
/// An instance's place on a network is a pair of files named by its address, `hosts/<address>` (a hosts(5)
/// line) and `dhcp/<address>` (dnsmasq's `MAC,ADDRESS,NAME`). The first is made with link(2), which fails
/// when the file exists, so two launches (of any users: the folders are sticky and world-writable, like
/// /tmp) never get one address; dnsmasq reads both folders as files come.
public struct NetworkStore: Sendable {
    /// The folder of all networks (`NimbusPaths.networks`).
    public let root: URL

    /// The networks under `paths.networks`.
    public init(paths: NimbusPaths) {
        root = paths.networks
    }

    /// A reservation: which instance has which address and MAC on a network, and the user who made it.
    public struct Host: Sendable, Equatable {
        /// The reserved address.
        public var address: IPv4Address
        /// The name of the instance holding it.
        public var instance: String
        /// The instance's MAC on the network; nil when its DHCP entry is missing or unreadable.
        public var macAddress: String?
        /// The user who made the reservation: the owner of its hosts file.
        public var owner: uid_t
    }

    func folder(_ name: String) -> URL { root.appending(path: name, directoryHint: .isDirectory) }
    func specFile(_ name: String) -> URL { folder(name).appending(path: "network.yaml") }
    var lockFile: URL { root.appending(path: ".lock") }

    /// True when a network of that name exists (its `network.yaml` is there).
    public func exists(_ name: String) -> Bool { FileManager.default.fileExists(atPath: specFile(name).path) }

    /// Every network's name, sorted; folders being made (hidden) are not networks yet.
    public func names() -> [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: root.path)) ?? [])
            .filter { !$0.hasPrefix(".") && exists($0) }.sorted()
    }

    /// Reads the network's `network.yaml`; fails with `.notFound` when the network does not exist,
    /// with `.io` when the file is damaged.
    public func load(_ name: String) throws(NimbusError) -> NetworkSpec {
        guard exists(name) else {
            throw NimbusError(
                .notFound,
                "network \"\(name)\" does not exist: `nimbus network list` shows the networks, `nimbus network create \(name)` makes it"
            )
        }
        do {
            return try YAMLDecoder().decode(NetworkSpec.self, from: String(contentsOf: specFile(name), encoding: .utf8))
        } catch {
            throw NimbusError(
                .io, "\(specFile(name).path) is damaged: fix it, or `nimbus network delete \(name)`", cause: error)
        }
    }

    /// The network's folders, without reading its hosts.
    private func layout(_ spec: NetworkSpec) -> NetworkDefinition { spec.definition(in: folder(spec.name), hosts: []) }

    /// The network as its driver makes it, with the instances on it now.
    func definition(_ spec: NetworkSpec) -> NetworkDefinition {
        spec.definition(
            in: folder(spec.name),
            hosts: hosts(spec).compactMap { host in
                host.macAddress.map { .init(name: host.instance, address: host.address, macAddress: $0) }
            })
    }

    /// Runs `body` holding the lock of all networks (creating and deleting: subnets and names are checked
    /// across networks).
    func withLock<T: Sendable>(_ body: () async throws -> T) async throws -> T {
        try makeFolder(root, mode: 0o755)
        return try await FileLock.withLock(lockFile, what: "the networks", body)
    }

    /// Writes a new network's folder in a hidden place and renames it into place.
    func create(_ spec: NetworkSpec) throws(NimbusError) {
        let staging = root.appending(path: ".\(spec.name).\(getpid()).new", directoryHint: .isDirectory)
        try? FileManager.default.removeItem(at: staging)
        try makeFolder(staging, mode: 0o755)
        do throws(NimbusError) {
            // Sticky and world-writable: any user's launch adds its instance, none removes another's.
            for sub in ["hosts", "dhcp"] { try makeFolder(staging.appending(path: sub), mode: 0o1777) }
            let yaml: String
            do { yaml = try YAMLEncoder().encode(spec) } catch {
                throw NimbusError(.internalError, "could not encode network \(spec.name): \(error)")
            }
            try AtomicFile.write(Data(yaml.utf8), to: staging.appending(path: "network.yaml"))
            guard rename(staging.path, folder(spec.name).path) == 0 else {
                throw posixFailure("move into place", folder(spec.name))
            }
        } catch {
            try? FileManager.default.removeItem(at: staging)
            throw error
        }
    }

    func remove(_ name: String) throws(NimbusError) {
        do { try FileManager.default.removeItem(at: folder(name)) } catch {
            throw NimbusError(.io, "could not remove \(folder(name).path)", cause: error)
        }
    }

    // MARK: Hosts

    /// The network's reservations, by address.
    public func hosts(_ spec: NetworkSpec) -> [Host] {
        let definition = layout(spec)
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: definition.hostsFolder.path)) ?? []
        return entries.compactMap { entry -> Host? in
            guard !entry.hasPrefix("."), let address = IPv4Address(entry) else { return nil }
            let file = definition.hostsFolder.appending(path: entry)
            var info = stat()
            guard let text = try? String(contentsOf: file, encoding: .utf8), stat(file.path, &info) == 0,
                let name = text.split(whereSeparator: \.isWhitespace).dropFirst().first
            else { return nil }
            let dhcp = try? String(contentsOf: definition.dhcpFolder.appending(path: entry), encoding: .utf8)
            let mac = dhcp?.split(separator: ",").first.map { String($0).trimmingCharacters(in: .whitespaces) }
            return Host(address: address, instance: String(name), macAddress: mac, owner: info.st_uid)
        }.sorted { $0.address < $1.address }
    }

    /// Reserves `address` (or the lowest free guest address) for `instance` with `macAddress`. Fails when
    /// the address is taken, outside the subnet, or the network's gateway; the name must be free on the
    /// network unless `isStale` says its holder is gone (then its entry is replaced).
    func reserve(
        _ spec: NetworkSpec, instance: InstanceName, macAddress: String, address wanted: IPv4Address?,
        isStale: (Host) -> Bool
    ) throws(NimbusError) -> IPv4Address {
        let definition = layout(spec)
        for host in hosts(spec) where host.instance == instance.rawValue {
            guard isStale(host) else {
                throw NimbusError(
                    .alreadyExists,
                    "the name \(instance) is taken on network \(spec.name) (\(host.address), another user's instance): choose another --name"
                )
            }
            release(spec, address: host.address)
        }
        if let wanted {
            try spec.checkGuestAddress(wanted)
            guard try claim(wanted, instance: instance, macAddress: macAddress, in: definition) else {
                let holder = hosts(spec).first { $0.address == wanted }?.instance ?? "another instance"
                throw NimbusError(
                    .alreadyExists,
                    "--network \(spec.name):\(wanted): the address is taken by \(holder): choose another, or leave it out and Nimbus picks one"
                )
            }
            return wanted
        }
        let taken = Set(hosts(spec).map(\.address.value))
        for value in spec.subnet.guestAddresses where !taken.contains(value) {
            if try claim(IPv4Address(value), instance: instance, macAddress: macAddress, in: definition) {
                return IPv4Address(value)
            }
        }
        throw NimbusError(
            .invalidState,
            "network \(spec.name) (\(spec.subnet)) has no free address: delete an instance on it, or use another network"
        )
    }

    /// Makes `hosts/<address>` if no one has (link(2) of a finished temporary file), then `dhcp/<address>`.
    private func claim(
        _ address: IPv4Address, instance: InstanceName, macAddress: String, in definition: NetworkDefinition
    ) throws(NimbusError) -> Bool {
        let file = definition.hostsFolder.appending(path: address.description)
        let temporary = definition.hostsFolder.appending(
            path: ".\(address).\(getpid()).\(UInt32.random(in: 0...UInt32.max))")
        try AtomicFile.write(Data("\(address) \(instance)\n".utf8), to: temporary)
        defer { unlink(temporary.path) }
        guard link(temporary.path, file.path) == 0 else {
            if errno == EEXIST { return false }
            throw posixFailure("reserve an address in", file)
        }
        // dnsmasq watches for files closed after writing or moved in, and a link(2) is neither.
        let fd = open(file.path, O_WRONLY | O_APPEND | O_CLOEXEC)
        if fd >= 0 { close(fd) }
        try AtomicFile.write(
            Data("\(macAddress),\(address),\(instance)\n".utf8),
            to: definition.dhcpFolder.appending(path: address.description))
        return true
    }

    /// Gives an address back.
    func release(_ spec: NetworkSpec, address: IPv4Address) {
        let definition = layout(spec)
        unlink(definition.dhcpFolder.appending(path: address.description).path)
        unlink(definition.hostsFolder.appending(path: address.description).path)
    }

    private func makeFolder(_ url: URL, mode: mode_t) throws(NimbusError) {
        if FileManager.default.fileExists(atPath: url.path) { return }
        do {
            try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
        } catch {
            throw NimbusError(.io, "could not create \(url.path)", cause: error)
        }
        // chmod, as mkdir's mode goes through the umask.
        chmod(url.path, mode)
    }
}
