import Foundation
import NimbusCore
import NimbusDisks
import NimbusImages
import NimbusMachines
import NimbusSeed
import Yams

/// What users do with instances: launch, start, stop, delete, reach. It joins images, disks, seeds and
/// machines; the CLI only parses and formats around it.
///
/// Every change of an instance happens under its lock (`InstanceStore.withLock`); waiting for a guest to
/// become ready happens outside it, so `nimbus list` or `stop` never wait behind a booting guest.
public struct InstanceManager: Sendable {
    /// Where the instances, the image cache, the keys and the configuration live.
    public let paths: NimbusPaths
    /// The installation's defaults, from config.yaml.
    public let config: NimbusConfig
    /// The instance folders on disk, and their locks.
    public let store: InstanceStore
    let hypervisor: InstanceDrivers
    /// The host networks instances join.
    public let networks: NetworkManager
    /// The data volumes instances mount.
    public let volumes: VolumeManager
    /// Messages for people (phases, notices), one line each; the CLI writes them to stderr.
    let progress: @Sendable (String) -> Void
    /// Image download and import progress; the CLI draws it.
    public var imageProgress: @Sendable (TransferProgress) -> Void = { _ in }

    /// A manager of the instances under `paths`, running machines through `drivers` (the CLI gives
    /// `NimbusDrivers.StandardDrivers`; `import NimbusDrivers` adds an initializer that does).
    public init(
        paths: NimbusPaths, config: NimbusConfig, drivers: any MachineDrivers,
        progress: @escaping @Sendable (String) -> Void = { _ in }
    ) {
        self.paths = paths
        self.config = config
        self.store = InstanceStore(paths: paths)
        self.hypervisor = InstanceDrivers(drivers: drivers, progress: progress)
        self.networks = NetworkManager(paths: paths, drivers: drivers, progress: progress)
        self.volumes = VolumeManager(paths: paths, instances: store, drivers: hypervisor)
        self.progress = progress
    }

    /// The user Nimbus creates in every cloud-init guest, with passwordless sudo and the SSH keys.
    public static let defaultUser = "nimbus"

    /// Fills new instance folders.
    var builder: InstanceBuilder {
        InstanceBuilder(networks: networks.store, volumes: volumes.store, progress: progress)
    }
    /// Checks specs and plans their machines.
    var planner: MachinePlanner { MachinePlanner(drivers: hypervisor, volumes: volumes.store, progress: progress) }

    // MARK: Launch

    /// Creates `spec`'s instance and starts it; with `wait`, returns when cloud-init has finished.
    ///
    /// Everything the user gave is checked before anything is written. The instance is built in a hidden
    /// folder and renamed into place before QEMU starts, so a launch killed at any point leaves nothing, or
    /// a whole instance that `list` shows and `delete` removes, never a QEMU without its folder.
    /// `volumeSizes` makes the named volumes of `spec.volumes` that do not exist, at those sizes
    /// (`--volume NAME:PATH:SIZE`); a launch that fails removes them again.
    @discardableResult
    public func launch(
        _ spec: InstanceSpec, volumeSizes: [String: ByteSize] = [:], wait: Bool, timeout: Duration
    ) async throws -> InstanceInfo {
        let clock = ContinuousClock.now
        try planner.check(spec)
        try networks.check(spec.networks, driver: spec.driver)
        if !spec.volumes.isEmpty {
            try volumes.check(
                spec.volumes, sizes: volumeSizes, for: spec.name,
                taken: spec.mounts.map(\.guestPath) + (spec.ephemeral.map { [$0.mountPoint] } ?? []),
                driver: spec.driver)
        }
        try await hypervisor.check(spec)
        try await planner.checkHost(spec)
        var userData: UserData?
        if let bytes = spec.userDataBytes {
            do {
                userData = try UserData(bytes: bytes, source: "--cloud-init")
            } catch {
                throw error.nimbusError
            }
        }
        for warning in userData?.warnings ?? [] { progress("warning: \(warning)") }
        var userIgnition: UserIgnition?
        if let text = spec.ignition {
            do {
                userIgnition = try await UserIgnition(text: text, source: "the --ignition config").validated()
            } catch let error as SeedError {
                throw error.nimbusError
            }
        }
        guard !store.exists(spec.name) else {
            throw NimbusError(
                .alreadyExists,
                "an instance named \"\(spec.name)\" exists already: choose another --name, or `nimbus delete --purge \(spec.name)` first"
            )
        }

        let image = try await pullImage(spec.image)
        if userIgnition != nil, image.distribution != .fedoraCoreOS {
            throw NimbusError(
                .invalidArgument,
                "--ignition needs a CoreOS image (like fedora-coreos:stable): \(spec.image) boots cloud-init, so give its personality with --cloud-init"
            )
        }
        var spec = spec
        spec.firmware = try await planner.resolveFirmware(spec, image: image)
        spec.mountType = planner.resolveMountType(spec)
        guard spec.disk.bytes >= image.virtualSize else {
            throw NimbusError(
                .invalidArgument,
                "--disk \(spec.disk) is smaller than the image's virtual size \(ByteSize(bytes: image.virtualSize).humanReadable): "
                    + "ask for at least \(ByteSize(bytes: image.virtualSize).humanReadable)")
        }
        let userKey = try await installationKey()
        // Addresses and volumes are taken before the lock, so a launch that then fails gives them back below.
        spec.networks = try await networks.reserve(spec.networks, for: spec.name, exists: store.exists)
        let reservedNetworks = spec.networks
        let madeVolumes: VolumeManager.Attached
        do {
            madeVolumes = try await volumes.attach(
                spec.volumes, sizes: volumeSizes, to: spec.name, driver: spec.driver)
        } catch {
            await networks.release(reservedNetworks, of: spec.name)
            throw error
        }

        // With the seed over HTTP, startMachine returns the server this boot fetches it from.
        let driver = hypervisor.driver(for: spec)
        let definitionPlace = driver.definitions?.place
        let seedServer: SeedServer?
        do {
            seedServer = try await store.withLock(spec.name) { [spec] lock in
                // Known before the definition exists, so a launch killed after making it still finds it in `list`.
                if let definitionPlace { try rememberPlace(definitionPlace) }
                _ = try await store.create(spec) { staging in
                    try await builder.build(
                        spec, image: image, userKey: userKey, userData: userData, userIgnition: userIgnition,
                        in: staging)
                }
                progress("\(spec.name): created from \(image.reference) (\(elapsed(since: clock)))")
                do {
                    return try await startMachine(spec.name, clock: clock)
                } catch {
                    // A launch whose machine never ran leaves nothing behind, so the same command can be retried
                    // once the cause (a port in use, a missing firmware) is fixed.
                    try? await driver.forget(store.directory(spec.name).machine)
                    try? await driver.storage?.deleteStorage(store.directory(spec.name).machine)
                    try? store.remove(spec.name, lock: lock)
                    if let definitionPlace { await forgetPlaceIfUnused(definitionPlace) }
                    throw error
                }
            }
        } catch {
            await networks.release(reservedNetworks, of: spec.name)
            if !spec.volumes.isEmpty { await volumes.release(madeVolumes, of: spec.name) }
            throw error
        }
        // Outside the lock, like readiness; even without `wait`, as no one else would serve the seed.
        if let seedServer { try await serveSeed(seedServer, to: spec.name, clock: clock, timeout: timeout) }
        if wait { try await waitUntilReady(spec.name, clock: clock, timeout: timeout) }
        return try await info(spec.name)
    }

    // MARK: Images and keys

    /// The cached image `reference` names, pulled or imported when missing; `refresh` asks the catalog afresh
    /// (`upgrade` wants its newest build, not the one named an hour ago).
    func pullImage(_ reference: String, refresh: Bool = false) async throws -> CachedImage {
        let images = try imageStore(refresh: refresh)
        return try await images.pull(try await images.reference(reference), as: reference)
    }

    /// The image cache as this manager uses it: progress and warnings to its reporters, the instances' disks
    /// kept from pruning; `offline` reads catalogs from cached metadata only (no network).
    func imageStore(refresh: Bool = false, offline: Bool = false) throws(NimbusError) -> ImageStore {
        var options = ImageStore.Options()
        let report = progress
        options.warn = { report($0) }
        options.progress = imageProgress
        options.refresh = refresh
        options.offline = offline
        let instances = store
        options.disks = { instances.disks() }
        return try ImageStore(paths: paths, options: options)
    }

    /// The installation's SSH key pair, made on first use (ed25519, OpenSSH format, 0600 in a 0700 folder).
    public func installationKey() async throws -> SSHKeyPair {
        try store.createFolder(paths.keys)
        let privateKey = paths.keys.appending(path: "id_ed25519")
        return try await FileLock.withLock(paths.keys.appending(path: ".lock"), what: "the installation's SSH key") {
            if let text = try? String(contentsOf: privateKey, encoding: .utf8) {
                do {
                    return try SSHKeyPair(openSSHPrivateKey: text)
                } catch {
                    throw NimbusError(
                        .io, "\(privateKey.path) is not a usable key: move it away and Nimbus makes a new one",
                        cause: error)
                }
            }
            let pair = SSHKeyPair(comment: "nimbus@\(ProcessInfo.processInfo.hostName)")
            try AtomicFile.write(Data(pair.openSSHPrivateKey.utf8), to: privateKey, permissions: 0o600)
            try AtomicFile.write(Data((pair.publicKeyLine + "\n").utf8), to: privateKey.appendingPathExtension("pub"))
            return pair
        }
    }

    // MARK: Start

    /// Starts the instance's machine. Call it with the instance's lock held. For a seed over HTTP it
    /// returns the running `SeedServer`, which the caller hands to `serveSeed` once the lock is released.
    @discardableResult
    func startMachine(_ name: InstanceName, clock: ContinuousClock.Instant) async throws -> SeedServer? {
        let dir = store.directory(name)
        let spec = try store.loadSpec(name)
        var state = try store.loadState(name)
        if let ephemeral = spec.ephemeral {
            try await Ephemeral.format(dir.ephemeralDisk, size: ephemeral.size)
        }
        // A volume deleted by hand while the instance was stopped: say which, rather than QEMU's open error.
        _ = try volumes.specs(spec.volumes)
        let attachments = try await machineAttachments(spec)
        let seedServer = try await startSeedServer(name, spec: spec)
        var machine = planner.machineConfig(spec, state: state, in: dir, seedURL: seedServer?.guestURL)
        machine.network.attachments = attachments
        let driver = hypervisor.driver(for: spec)
        if driver.definitions != nil { machine.annotations = annotations(spec, state: state, in: dir) }
        do {
            let running = try await driver.start(machine, in: dir.machine)
            if let notice = running.accelerator.notice { progress(notice) }
            state.sshPort = running.sshHostPort
            state.sshHost = running.sshHost == "127.0.0.1" ? nil : running.sshHost
            state.accelerator = running.accelerator.accelerator.rawValue
            state.acceleratorReason = running.accelerator.reason
            state.lastStartedAt = Date()
            state.lastError = nil
            state.cloudInitStatus = nil
            try store.saveState(state, in: dir)
            await refreshAnnotations(name)
            progress(
                "\(name): \(BootPhase.qemuStarted.rawValue) with \(running.accelerator.accelerator.rawValue) (\(elapsed(since: clock)))"
            )
        } catch {
            await seedServer?.shutdown()
            state.lastError = error.message
            try? store.saveState(state, in: dir)
            throw error
        }
        return seedServer
    }

    /// Starts a stopped instance; with `wait`, returns when it is ready.
    public func start(_ name: InstanceName, wait: Bool, timeout: Duration) async throws {
        let clock = ContinuousClock.now
        let seedServer = try await store.withLock(name) { _ in
            try finishInterruptedSwap(name)
            let state = try store.loadState(name)
            try requireUsable(name, state)
            let machine = store.directory(name).machine
            switch await hypervisor.driver(machine).status(of: machine).state {
            case .stopped: break
            case .paused:
                throw NimbusError(.invalidState, "\(name) is suspended: `nimbus resume \(name)`")
            default:
                throw NimbusError(.invalidState, "\(name) is running already")
            }
            return try await startMachine(name, clock: clock)
        }
        // cloud-init reads its datasource at every boot: serve the seed again, even without `wait`.
        if let seedServer { try await serveSeed(seedServer, to: name, clock: clock, timeout: timeout) }
        if wait { try await waitUntilReady(name, clock: clock, timeout: timeout) }
    }

    /// Waits for the phases of a boot, then records cloud-init's result; a cloud-init that finished with
    /// errors is an error naming the failed modules, and the instance stays up for inspection.
    func waitUntilReady(_ name: InstanceName, clock: ContinuousClock.Instant, timeout: Duration) async throws {
        let ssh = try sshAccess(name, state: store.loadState(name))
        let spec = try store.loadSpec(name)
        let report = progress
        let cloudInit: CloudInitSeed? =
            FileManager.default.fileExists(atPath: store.directory(name).ignition.path)
            ? nil : spec.seedTransport.isDisk ? .cdrom : .http
        var readiness = Readiness(
            serialLog: store.directory(name).serialLog, ssh: ssh, start: clock, cloudInit: cloudInit
        ) { phase, time in
            report("\(name): \(phase.rawValue) (\(Self.format(time)))")
        }
        let machineDir = store.directory(name).machine
        // The instance's own driver, chosen once: asked every 200 ms, and each choice reads instance.yaml.
        let driver = hypervisor.driver(for: spec)
        readiness.resetMachine = { () async throws(NimbusError) in try await driver.reset(machineDir) }
        let result = try await readiness.wait(timeout: timeout) { await driver.isRunning(machineDir) }
        try await store.withLock(name) { _ in
            try store.updateState(name) { $0.cloudInitStatus = result.status }
            await refreshAnnotations(name)
        }
        if result.status == "error" {
            let modules =
                result.errors.isEmpty
                ? (result.detail ?? "see `nimbus exec \(name) -- cloud-init status --long`")
                : result.errors.joined(separator: "; ")
            throw NimbusError(
                .processFailed,
                "cloud-init finished with errors in \(name): \(modules). The instance is left running: `nimbus shell \(name)` to look, /var/log/cloud-init.log has the details"
            )
        }
        // What cloud-init wrote, the SSH host keys above all, is on the guest's disk now rather than up to 30 s
        // later (ext4 writes file data back lazily): a QEMU killed soon after the launch would otherwise leave
        // empty key files, and an SSH server that never starts again.
        if cloudInit != nil { _ = try? await ssh.run(["sync"]) }
        try await checkMounts(spec, ssh: ssh)
    }

    /// Fails naming each `--mount` the guest has not mounted (fstab's `nofail` lets the boot go on without
    /// it), with the guest's own reason: a second `mount` of it, whose error is kept.
    func checkMounts(_ spec: InstanceSpec, ssh: SSHAccess) async throws {
        guard !spec.mounts.isEmpty else { return }
        let type = spec.mountType.guestFileSystem
        let script = """
            for m in "$@"; do
              findmnt -rn -M "$m" -t \(type) >/dev/null && continue
              error=$(sudo -n mount "$m" 2>&1) && findmnt -rn -M "$m" -t \(type) >/dev/null && continue
              printf '%s\\t%s\\n' "$m" "$(printf '%s' "${error:-not mounted}" | tr '\\n' ' ' | tr -s ' ')"
            done
            """
        let output = try await ssh.run(["sh", "-c", script, "sh"] + spec.mounts.map(\.guestPath))
        guard output.status == 0 else {
            throw NimbusError(
                .processFailed, "could not check the mounts in \(spec.name): \(output.standardError)")
        }
        let missing = output.standardOutput.split(separator: "\n").map { line in
            let parts = line.split(separator: "\t", maxSplits: 1).map(String.init)
            let mount = spec.mounts.first { $0.guestPath == parts[0] }
            return
                "\(mount.map { "\($0.hostPath):\($0.guestPath)" } ?? parts[0]) (\(parts.count > 1 ? parts[1] : "not mounted"))"
        }
        guard !missing.isEmpty else { return }
        let hint =
            spec.mountType == .ninep
            ? "the guest's kernel may have no 9p (Debian's cloud kernel has none): relaunch with --mount-type virtiofs"
            : "the guest's kernel needs virtiofs (CONFIG_VIRTIO_FS, in every current distribution kernel), or relaunch with --mount-type 9p"
        throw NimbusError(
            .guestSetup,
            "the guest could not mount \(missing.joined(separator: "; ")): \(hint). The instance is left running: `nimbus shell \(spec.name)` to look"
        )
    }

    /// Refuses instances that are deleted or broken, saying what to do.
    func requireUsable(_ name: InstanceName, _ state: InstanceState) throws(NimbusError) {
        if state.deleted {
            throw NimbusError(.invalidState, "\(name) is deleted: `nimbus recover \(name)` brings it back")
        }
    }

    func elapsed(since start: ContinuousClock.Instant) -> String { Self.format(.now - start) }

    static func format(_ duration: Duration) -> String {
        let seconds = Double(duration.components.seconds) + Double(duration.components.attoseconds) / 1e18
        return String(format: "%.1fs", seconds)
    }
}

extension String {
    var nonEmpty: String? { isEmpty ? nil : self }
}

/// Picks each instance's machine driver from its spec (`driver`, `connect`, `pool` in instance.yaml, which
/// sits in the machine's folder), through the `MachineDrivers` the manager was given.
struct InstanceDrivers: Sendable {
    let drivers: any MachineDrivers
    var progress: @Sendable (String) -> Void = { _ in }

    /// Checks the spec's driver before anything is written: that it can start machines (libvirt: its daemon
    /// answers).
    func check(_ spec: InstanceSpec) async throws(NimbusError) {
        try await drivers.driver(for: spec.driver, progress: progress).checkReachable()
    }

    /// The driver of the machine in `directory`, from the instance.yaml beside it.
    func driver(_ directory: MachineDirectory) -> any Hypervisor {
        let file = directory.url.appending(path: "instance.yaml")
        let spec = (try? String(contentsOf: file, encoding: .utf8)).flatMap {
            try? YAMLDecoder().decode(InstanceSpec.self, from: $0)
        }
        return driver(for: spec)
    }

    /// The driver of an instance whose spec is already read (`list` reads hundreds: parse each once); the
    /// local QEMU driver without a spec.
    func driver(for spec: InstanceSpec?) -> any Hypervisor {
        drivers.driver(for: spec?.driver ?? .qemu, progress: progress)
    }
}
