import Foundation
import NimbusCore
import NimbusDisks
import NimbusMachines

/// The `nimbus volume` commands, and what instances need of volumes: taken at launch (one instance at a
/// time), given back by `delete --purge`, which never deletes one.
public struct VolumeManager: Sendable {
    let store: VolumeStore
    let instances: InstanceStore
    let drivers: InstanceDrivers

    init(paths: NimbusPaths, instances: InstanceStore, drivers: InstanceDrivers) {
        store = VolumeStore(paths: paths)
        self.instances = instances
        self.drivers = drivers
    }

    // MARK: Commands

    /// Makes volume `name`, an empty disk of `size` that the first instance it is attached to formats: a qcow2
    /// here, or with a libvirt `driver` a volume in that daemon's pool (for its instances only).
    public func create(name: String, size: ByteSize, driver: DriverChoice = .qemu) async throws -> VolumeInfo {
        try VolumeSpec.checkName(name)
        try VolumeSpec.checkSize(size, what: "--size")
        try await store.withLock {
            guard !store.exists(name) else {
                throw NimbusError(.alreadyExists, "volume \"\(name)\" exists already: choose another name")
            }
            var spec = VolumeSpec(name: name, size: size)
            spec.libvirt = VolumeSpec.LibvirtPlace(for: name, on: driver)
            if let place = spec.libvirt {
                try await drivers.drivers.driver(for: place.driver, progress: drivers.progress).storage?
                    .createDataVolume(place.volume, size: size.bytes)
            }
            do {
                try await store.create(spec)
            } catch {
                if let place = spec.libvirt {
                    try? await drivers.drivers.driver(for: place.driver, progress: drivers.progress).storage?
                        .deleteDataVolume(place.volume)
                }
                throw error
            }
        }
        return try info(name)
    }

    /// Every volume, by name.
    public func list() -> [VolumeInfo] {
        store.names().compactMap { try? info($0) }
    }

    /// One volume.
    public func info(_ name: String) throws(NimbusError) -> VolumeInfo {
        let spec = try store.load(name)
        guard let place = spec.libvirt else {
            return VolumeInfo(spec: spec, holder: holder(of: spec), used: store.used(name), path: store.disk(name).path)
        }
        return VolumeInfo(spec: spec, holder: holder(of: spec), used: nil, path: place.description)
    }

    /// Grows volume `name` to `size`; the guest's filesystem grows to it at the instance's next start. Refused
    /// while the instance holding it runs, and for a smaller size (data would be lost).
    public func resize(_ name: String, size: ByteSize) async throws -> VolumeInfo {
        try VolumeSpec.checkName(name)
        try await store.withLock {
            var spec = try store.load(name)
            guard size > spec.size else {
                throw NimbusError(
                    .invalidArgument,
                    "--size \(size) is not larger than volume \(name)'s \(spec.size): a volume only grows (shrinking would cut its filesystem)"
                )
            }
            if let holder = holder(of: spec), await isRunning(holder) {
                throw NimbusError(
                    .invalidState,
                    "volume \(name) is attached to \(holder), which is running: `nimbus stop \(holder)` first; its filesystem grows at the next start"
                )
            }
            // In a libvirt pool once an instance started with it; the local disk follows, for a pool volume not
            // made yet (its instance never started) or a daemon that lost it.
            if let place = spec.libvirt {
                _ = try await drivers.drivers.driver(for: place.driver, progress: drivers.progress)
                    .storage?.resizeDataVolume(place.volume, to: size.bytes)
            }
            try await DiskImage.resize(store.disk(name), to: size.bytes)
            spec.size = size
            try store.save(spec)
        }
        return try info(name)
    }

    /// Deletes volume `name` and its data; refused while an instance holds it, naming the instance.
    public func delete(_ name: String) async throws {
        try VolumeSpec.checkName(name)
        try await store.withLock {
            let spec = try store.load(name)
            if let holder = holder(of: spec) {
                throw NimbusError(
                    .invalidState,
                    "volume \(name) is attached to \(holder): `nimbus delete --purge \(holder)` first (it keeps the volume), then delete the volume"
                )
            }
            // A daemon that does not answer keeps the volume, and this record of it.
            if let place = spec.libvirt {
                try await drivers.drivers.driver(for: place.driver, progress: drivers.progress)
                    .storage?.deleteDataVolume(place.volume)
            }
            try store.remove(name)
        }
    }

    // MARK: What instances need

    /// Checks `--volume` attachments before anything is written: no volume twice, no mount point twice (nor
    /// one of the `taken` mount points of shares and the scratch disk), each volume existing or given a size
    /// to be made with, and free or already the instance's.
    func check(
        _ attachments: [VolumeAttachment], sizes: [String: ByteSize], for instance: InstanceName, taken: [String],
        driver: DriverChoice = .qemu
    )
        throws(NimbusError)
    {
        var volumes: Set<String> = []
        var mountPoints = Set(taken)
        for attachment in attachments {
            guard volumes.insert(attachment.volume).inserted else {
                throw NimbusError(
                    .invalidArgument, "--volume \(attachment.volume) is given twice: a volume is mounted once")
            }
            guard mountPoints.insert(attachment.mountPoint).inserted else {
                throw NimbusError(
                    .invalidArgument,
                    "--volume \(attachment.volume):\(attachment.mountPoint): something else is mounted there already; choose another path"
                )
            }
            guard store.exists(attachment.volume) else {
                if sizes[attachment.volume] != nil { continue }
                throw NimbusError(
                    .notFound,
                    "volume \"\(attachment.volume)\" does not exist: `nimbus volume create \(attachment.volume) --size 10G`, or give a size to make it (--volume \(attachment.volume):\(attachment.mountPoint):10G)"
                )
            }
            let spec = try store.load(attachment.volume)
            try checkFree(spec, for: instance)
            try checkPlace(spec, for: driver)
        }
    }

    /// Refuses a volume that lives in a libvirt pool to an instance that cannot reach it there.
    private func checkPlace(_ spec: VolumeSpec, for driver: DriverChoice) throws(NimbusError) {
        guard let place = spec.libvirt, !place.serves(driver) else { return }
        throw NimbusError(
            .invalidArgument,
            "volume \(spec.name) lives in \(place.description) since an instance there used it: attach it to an instance of that driver (--driver libvirt\(place.connect.map { " --connect \($0)" } ?? "")\(place.pool.map { " --pool \($0)" } ?? ""))"
        )
    }

    /// What `attach` did, for `release` to undo: the volumes it made, and the others as they were before.
    struct Attached: Sendable {
        var made: [String] = []
        var before: [VolumeSpec] = []
    }

    /// Takes the volumes for `instance`, making those given a size that do not exist; all or none. Returns what
    /// it did, which `release` undoes if the launch fails after all.
    func attach(
        _ attachments: [VolumeAttachment], sizes: [String: ByteSize], to instance: InstanceName,
        driver: DriverChoice = .qemu
    ) async throws -> Attached {
        // An instance without volumes leaves no trace in the volumes folder.
        guard !attachments.isEmpty else { return Attached() }
        return try await store.withLock { () async throws -> Attached in
            var taken: [VolumeSpec] = []
            var made: [String] = []
            do throws(NimbusError) {
                for attachment in attachments {
                    if !store.exists(attachment.volume), let size = sizes[attachment.volume] {
                        try await store.create(VolumeSpec(name: attachment.volume, size: size))
                        made.append(attachment.volume)
                    }
                    var spec = try store.load(attachment.volume)
                    try checkFree(spec, for: instance)
                    try checkPlace(spec, for: driver)
                    taken.append(spec)
                    spec.attachedTo = instance.rawValue
                    if spec.libvirt == nil {
                        // Its place from now on; the pool volume is made at the instance's first start.
                        spec.libvirt = VolumeSpec.LibvirtPlace(for: spec.name, on: driver)
                    }
                    try store.save(spec)
                }
            } catch {
                for spec in taken where !made.contains(spec.name) { try? store.save(spec) }
                for name in made { try? store.remove(name) }
                throw error
            }
            return Attached(made: made, before: taken.filter { !made.contains($0.name) })
        }
    }

    /// Undoes `attach` for a launch that failed: the volumes `instance` took are as they were (free, and in no
    /// libvirt pool if they were in none), those made for it are removed, from a pool too if the failed start
    /// had made them there.
    func release(_ attached: Attached, of instance: InstanceName) async {
        await detach(from: instance)
        _ = try? await store.withLock {
            for spec in attached.before where store.exists(spec.name) { try store.save(spec) }
            for name in attached.made where store.exists(name) {
                if let place = try? store.load(name).libvirt {
                    try? await drivers.drivers.driver(for: place.driver, progress: drivers.progress).storage?
                        .deleteDataVolume(place.volume)
                }
                try store.remove(name)
            }
        }
    }

    /// Gives back the volumes `instance` holds; returns their names.
    @discardableResult
    func detach(from instance: InstanceName) async -> [String] {
        guard !store.names().isEmpty else { return [] }
        return
            (try? await store.withLock { () async throws -> [String] in
                var names: [String] = []
                for name in store.names() {
                    guard var spec = try? store.load(name), spec.attachedTo == instance.rawValue else { continue }
                    spec.attachedTo = nil
                    try store.save(spec)
                    names.append(name)
                }
                return names
            }) ?? []
    }

    /// The volumes of `attachments`, as stored; `.notFound` naming one that is gone.
    func specs(_ attachments: [VolumeAttachment]) throws(NimbusError) -> [VolumeSpec] {
        try attachments.map { attachment throws(NimbusError) in try store.load(attachment.volume) }
    }

    /// The instance holding `spec`, when that instance still exists (a holder whose folder is gone, after a
    /// crash between delete and detach, holds nothing).
    func holder(of spec: VolumeSpec) -> String? {
        guard let holder = spec.attachedTo, let name = try? InstanceName(holder), instances.exists(name) else {
            return nil
        }
        return holder
    }

    private func checkFree(_ spec: VolumeSpec, for instance: InstanceName) throws(NimbusError) {
        guard let holder = holder(of: spec), holder != instance.rawValue else { return }
        throw NimbusError(
            .alreadyExists,
            "volume \(spec.name) is attached to \(holder): a volume serves one instance at a time; `nimbus delete --purge \(holder)` gives it back"
        )
    }

    private func isRunning(_ holder: String) async -> Bool {
        guard let name = try? InstanceName(holder) else { return false }
        let machine = instances.directory(name).machine
        return await drivers.driver(machine).isRunning(machine)
    }
}

/// A volume as `nimbus volume list` and `info` show it; the JSON is stable.
public struct VolumeInfo: Codable, Sendable {
    /// The volume's name.
    public var name: String
    /// Its disk's virtual size (`20G`).
    public var size: String
    /// What its disk takes on the host (`1.2 GiB`); nil when it cannot be read.
    public var used: String?
    /// The instance it is attached to; nil when free.
    public var attachedTo: String?
    /// When it was made.
    public var createdAt: Date
    /// Its disk image on the host.
    public var path: String

    init(spec: VolumeSpec, holder: String?, used: UInt64?, path: String) {
        name = spec.name
        size = spec.size.description
        self.used = used.map { ByteSize(bytes: $0).humanReadable }
        attachedTo = holder
        createdAt = spec.createdAt
        self.path = path
    }
}
