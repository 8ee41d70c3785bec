import Foundation
import NimbusCore
import NimbusMachines

/// What `list` and `info` show of an instance; its JSON form (sorted keys) is documented in the README and
/// kept stable.
public struct InstanceInfo: Codable, Sendable, Equatable {
    /// The lifecycle state, read from the live process (never from a stored flag).
    public enum State: String, Codable, Sendable {
        case running, stopped, suspended, starting, stopping, error, deleted, unknown
        /// A libvirt domain of this store whose instance folder is missing: `nimbus recover` rebuilds it.
        case missing
    }

    /// The instance's name.
    public var name: String
    /// The live process's state; `deleted` after `delete`, `error` after a failed launch or start.
    public var state: State
    /// The image reference launched from.
    public var image: String
    /// Release and serial of the image, when known.
    public var imageVersion: String?
    /// The guest's IPv4 addresses while it runs: QEMU's user-mode network's fixed 10.0.2.15 (both drivers),
    /// then its address on each network.
    public var ipv4: [String]
    /// `user@127.0.0.1:port`, while running.
    public var ssh: String?
    /// The number of virtual CPUs (0 when the instance's files cannot be read).
    public var cpus: Int
    /// The guest's memory.
    public var memory: ByteSize
    /// Bytes the overlay takes on the host.
    public var diskUsed: ByteSize?
    /// The disk's virtual size.
    public var diskSize: ByteSize
    /// `kvm` or `tcg`, with why.
    public var accelerator: String?
    /// Why `accelerator` was chosen at the last start; nil until the instance has started.
    public var acceleratorReason: String?
    /// Seconds since the last start, while running.
    public var uptime: Int?
    /// cloud-init's status at the last readiness check.
    public var cloudInit: String?
    /// `qemu` or `libvirt`.
    public var driver: String
    /// Where it runs: `local`, or the host of the libvirt URI of a remote instance.
    public var host: String?
    /// Port forwards, as `127.0.0.1:8080->80/tcp`.
    public var forwards: [String]
    /// Why the instance is in the error state.
    public var error: String?
    /// `uefi` or `bios`.
    public var firmware: String?
    /// The guest's CPU model (QEMU's `-cpu`): the instance's own, or its accelerator's default at the last start.
    public var cpuModel: String?
    /// The instance's NICs on host networks (`--network`), running or not.
    public var networks: [NetworkAddress] = []
    /// The data volumes mounted in the guest (`--volume`), as `NAME:PATH`.
    public var volumes: [String] = []
    /// The newest build of the instance's image when it is not the one the instance runs (`20260210-0002`),
    /// from the catalog metadata cached on disk (no network: `nimbus image refresh` updates it).
    public var update: String?
    /// The image of the root kept by the last `upgrade` (`debian 12 (20260110-0001)`), while there is one:
    /// `nimbus rollback` returns to it.
    public var rollback: String?

    /// An instance's place on a network.
    public struct NetworkAddress: Codable, Sendable, Equatable {
        /// The network's name.
        public var name: String
        /// The instance's IPv4 address on the network.
        public var address: String
        /// The MAC address of the instance's NIC on the network.
        public var mac: String
    }
}

extension InstanceManager {
    /// Every instance, by name.
    public func list() async -> [InstanceInfo] {
        let names = store.names()
        await finishInterruptedSwaps(names)
        let updates = await imageUpdates(digests: Set(names.compactMap { try? store.loadState($0).imageDigest }))
        // Each instance is read on its own (spec YAML, state JSON, the live process): in parallel, since a
        // store of hundreds spends its time decoding, which both cores can share.
        return await withTaskGroup(of: InstanceInfo.self) { group in
            for name in names {
                group.addTask { (try? await info(name, updates: updates)) ?? brokenInfo(name) }
            }
            var infos: [InstanceInfo] = []
            for await info in group { infos.append(info) }
            // Domains of this store on its libvirt daemons whose folder is missing (only asked when the store
            // has used libvirt, so a QEMU-only store never waits on a daemon).
            infos += await lostInstances()
            return infos.sorted { $0.name < $1.name }
        }
    }

    /// The newest build of each cached image in `digests` that its catalog names, where it is another build:
    /// from cached metadata only, so `list` makes no network call.
    func imageUpdates(digests: Set<String>) async -> [String: String] {
        guard !digests.isEmpty, let images = try? imageStore(offline: true) else { return [:] }
        var updates: [String: String] = [:]
        for digest in digests {
            // CoreOS instances update themselves (and `upgrade` refuses them): no update is shown for them.
            if let image = await images.entry(digest), image.distribution != .fedoraCoreOS,
                let update = await images.update(of: image), update.available
            {
                updates[digest] = update.newest
            }
        }
        return updates
    }

    /// One instance, its state read from the live process.
    public func info(_ name: InstanceName) async throws -> InstanceInfo {
        let digest = try store.loadState(name).imageDigest
        return try await info(name, updates: await imageUpdates(digests: Set([digest].compactMap { $0 })))
    }

    /// One instance, with the image updates known (`imageUpdates`).
    func info(_ name: InstanceName, updates: [String: String]) async throws -> InstanceInfo {
        let dir = try store.requireExisting(name)
        let spec = try store.loadSpec(name)
        let state = try store.loadState(name)
        let driver = hypervisor.driver(for: spec)
        let status = await driver.status(of: dir.machine)
        let live: InstanceInfo.State =
            switch status.state {
            case .running: .running
            case .paused: .suspended
            case .stopped: .stopped
            case .crashed: .error
            case .transitioning: status.detail == "shutdown" ? .stopping : .starting
            case .unresponsive: .unknown
            }
        let running = live == .running || live == .suspended
        let resolved: InstanceInfo.State =
            state.deleted ? .deleted : (state.lastError != nil && !running ? .error : (state.complete ? live : .error))
        // The disk in the driver's storage (a libvirt pool volume), else the folder's; unknown ("-") when
        // neither answers.
        let used: ByteSize?
        do {
            if let allocation = try await driver.storage?.diskAllocation(dir.machine) {
                used = ByteSize(bytes: allocation)
            } else {
                used = (try? dir.disk.resourceValues(forKeys: [.totalFileAllocatedSizeKey]))?
                    .totalFileAllocatedSize.map { ByteSize(bytes: UInt64($0)) }
            }
        } catch {
            used = nil
        }
        let port = running ? state.sshPort : nil
        return InstanceInfo(
            name: name.rawValue, state: resolved, image: spec.image, imageVersion: state.imageDescription,
            ipv4: running ? ["10.0.2.15"] + spec.networks.compactMap { $0.address?.description } : [],
            ssh: port.map { "\(state.sshUser)@\(state.sshHost ?? "127.0.0.1"):\($0)" }, cpus: spec.cpus,
            memory: spec.memory, diskUsed: used,
            diskSize: spec.disk, accelerator: state.accelerator, acceleratorReason: state.acceleratorReason,
            uptime: running ? state.lastStartedAt.map { Int(Date().timeIntervalSince($0)) } : nil,
            cloudInit: state.cloudInitStatus, driver: spec.driver.name,
            host: driver.hostLabel,
            forwards: spec.forwards.map { "127.0.0.1:\($0.hostPort)->\($0.guestPort)/\($0.transport.rawValue)" },
            error: status.state == .crashed
                ? "the guest panicked (QEMU: \(status.detail ?? "guest-panicked"))" : state.lastError,
            firmware: spec.firmware.rawValue,
            cpuModel: spec.cpuModel ?? state.accelerator.flatMap(Accelerator.init(rawValue:))?.defaultCPUModel,
            networks: spec.networks.compactMap { attachment in
                guard let address = attachment.address, let mac = attachment.macAddress else { return nil }
                return InstanceInfo.NetworkAddress(name: attachment.network, address: address.description, mac: mac)
            }, volumes: spec.volumes.map { "\($0.volume):\($0.mountPoint)" },
            update: state.imageDigest.flatMap { updates[$0] }, rollback: rollbackDescription(dir))
    }

    /// An instance whose files cannot be read: shown as `error` so `recover` or `delete` can deal with it.
    func brokenInfo(_ name: InstanceName) -> InstanceInfo {
        InstanceInfo(
            name: name.rawValue, state: .error, image: "?", imageVersion: nil, ipv4: [], ssh: nil, cpus: 0,
            memory: ByteSize(bytes: 0), diskUsed: nil, diskSize: ByteSize(bytes: 0), accelerator: nil,
            acceleratorReason: nil, uptime: nil, cloudInit: nil, driver: "qemu", host: "local", forwards: [],
            error: "its files cannot be read: `nimbus recover \(name)` or `nimbus delete --purge \(name)`")
    }
}
