import Foundation
import NimbusCore
import NimbusImages
import NimbusMachines
import NimbusSeed

/// What `upgrade` would do to one instance: from which image build to which.
public struct UpgradePlan: Sendable, Codable, Equatable {
    /// The instance.
    public var name: String
    /// The image reference it runs now.
    public var fromImage: String
    /// The build it runs now (`debian 12 (20260110-0001)`).
    public var fromBuild: String?
    /// The image reference it would run.
    public var toImage: String
    /// The build it would run: the newest the catalog names.
    public var toBuild: String?
}

extension InstanceManager {
    // MARK: Upgrade by relaunch

    /// The least time the old root gets to be ready again when an upgrade gives up its new root: a short
    /// `--timeout` says how long to wait for a root that may not boot, not for one that did (under TCG, on a
    /// busy host, a Debian boot can take minutes).
    static let rollbackReadiness: Duration = .seconds(900)

    /// Moves `name` to a fresh root disk made from `reference` (nil: the newest build of its own image), with the
    /// same personality: hostname, users, SSH host key (known_hosts stays valid), volumes, forwards, network
    /// addresses; a new instance-id, so cloud-init runs on the new root as on a first boot.
    ///
    /// The image is pulled and verified first: nothing is stopped if that fails. `confirm` sees the plan before
    /// anything changes and throws to refuse it. The old root and seed are kept as the rollback point. When the
    /// new root does not become ready within `timeout`, the old one is started again (and given at least
    /// `rollbackReadiness`, however short `timeout` was: it booted before), and the error says why.
    /// Returns nil when the instance is on that build already.
    @discardableResult
    public func upgrade(
        _ name: InstanceName, to reference: String?, timeout: Duration,
        confirm: @Sendable (UpgradePlan) async throws -> Void = { _ in }
    ) async throws -> UpgradePlan? {
        let clock = ContinuousClock.now
        let dir = try store.requireExisting(name)
        let spec = try store.loadSpec(name)
        let state = try store.loadState(name)
        try requireUsable(name, state)
        try requireUpgradable(spec, dir)
        let target = reference ?? spec.image
        let image = try await pullImage(target, refresh: true)
        if image.sha256 == state.imageDigest {
            // Another name for the same build (`debian:bookworm` for `debian:12`): the spec takes it, so a
            // fleet file naming it is applied once.
            if target != spec.image {
                try await store.withLock(name) { _ in
                    var renamed = try store.loadSpec(name)
                    renamed.image = target
                    try InstanceStore.writeSpec(renamed, to: dir.spec)
                }
            }
            progress("\(name) is on \(InstanceBuilder.describe(image)) already: nothing to upgrade")
            return nil
        }
        guard image.distribution != .fedoraCoreOS else {
            throw NimbusError(
                .invalidArgument,
                "\(target) is a CoreOS image (Ignition): \(name) was launched from a cloud-init image; launch a new instance from it instead"
            )
        }
        guard spec.disk.bytes >= image.virtualSize else {
            throw NimbusError(
                .invalidArgument,
                "\(target) needs a disk of \(ByteSize(bytes: image.virtualSize).humanReadable), \(name) has \(spec.disk): launch a new instance with a bigger --disk instead"
            )
        }
        let plan = UpgradePlan(
            name: name.rawValue, fromImage: spec.image, fromBuild: state.imageDescription, toImage: target,
            toBuild: InstanceBuilder.describe(image))
        try await confirm(plan)
        let hostKey = try await instanceHostKey(name, dir: dir, state: state)
        let userKey = try await installationKey()
        let userData = try Self.userData(of: spec)

        let swap = RootSwap(dir: dir)
        /// The new root, made in `upgrade.new/` beside the instance's own files, which it does not touch.
        func stage() async throws {
            var next = try store.loadSpec(name)
            next.image = target
            let generation = (RootSwap.record(at: dir.rootRecord)?.generation ?? 0) + 1
            let staging = try swap.beginStaging()
            let made = try await builder.build(
                next, image: image, userKey: userKey, userData: userData, in: staging,
                root: (hostKey: hostKey, generation: generation))
            try InstanceStore.writeSpec(next, to: staging.spec)
            try RootSwap.write(
                RootRecord(
                    image: target, imageDigest: made.imageDigest, imageDescription: made.imageDescription,
                    seedInstanceID: made.seedInstanceID, generation: generation, madeAt: Date()),
                to: staging.rootRecord)
            try swap.finishStaging()
        }
        // The new root's start is part of the readiness below: a start that fails rolls back as a boot that does.
        let started: Result<SeedServer?, any Error> = try await store.withLock(name) { _ in
            try finishInterruptedSwap(name)
            let current = try store.loadState(name)
            try requireUsable(name, current)
            let driver = hypervisor.driver(for: spec)
            let wasRunning = await driver.status(of: dir.machine).state != .stopped
            try await stopIfRunning(name, dir.machine, driver: driver)
            do {
                try await stage()
            } catch {
                // Nothing was swapped: the half-made root goes, and a guest that was running runs again.
                _ = try? swap.finishInterrupted()
                if wasRunning { _ = try? await startMachine(name, clock: clock) }
                throw error
            }
            try swap.commit(current: rootRecord(of: current, spec: spec))
            try syncRootRecord(name)
            try await deleteUnusedRootDisks(name)
            progress(
                "\(name): new root from \(image.reference) (\(elapsed(since: clock))); the old root is the rollback point"
            )
            do {
                return .success(try await startMachine(name, clock: clock))
            } catch {
                return .failure(error)
            }
        }
        do {
            if let seedServer = try started.get() {
                try await serveSeed(seedServer, to: name, clock: clock, timeout: timeout)
            }
            try await waitUntilReady(name, clock: clock, timeout: timeout)
        } catch {
            let reason = (error as? NimbusError)?.message ?? "\(error)"
            progress("\(name): the new root did not become ready (\(reason)); rolling back")
            do {
                try await returnToRollbackPoint(name, timeout: max(timeout, Self.rollbackReadiness))
            } catch let rollback {
                throw NimbusError(
                    .guestSetup,
                    "the upgrade of \(name) to \(plan.toBuild ?? target) failed: \(reason). Returning to \(plan.fromBuild ?? plan.fromImage) failed too: \((rollback as? NimbusError)?.message ?? "\(rollback)"); `nimbus rollback \(name)` tries again"
                )
            }
            throw NimbusError(
                .guestSetup,
                "the upgrade of \(name) to \(plan.toBuild ?? target) failed: \(reason). \(name) is back on \(plan.fromBuild ?? plan.fromImage) and running; the new root was discarded"
            )
        }
        progress(
            "\(name): upgraded to \(plan.toBuild ?? target) (\(elapsed(since: clock))); `nimbus rollback \(name)` returns to \(plan.fromBuild ?? plan.fromImage)"
        )
        return plan
    }

    /// Returns `name` to its rollback point (the root before the last upgrade) and starts it; the newer root
    /// is deleted.
    public func rollback(_ name: InstanceName, timeout: Duration) async throws {
        try await returnToRollbackPoint(name, timeout: timeout)
        progress("\(name): rolled back to \((try? store.loadState(name))?.imageDescription ?? "its previous root")")
    }

    /// Deletes `name`'s rollback point.
    public func pruneRollback(_ name: InstanceName) async throws {
        try await store.withLock(name) { _ in
            let swap = RootSwap(dir: try store.requireExisting(name))
            try finishInterruptedSwap(name)
            guard swap.hasRollback else {
                progress("\(name) has no rollback point")
                return
            }
            try swap.drop()
            try await deleteUnusedRootDisks(name)
            progress("\(name): rollback point deleted")
        }
    }

    /// What `upgrade --all` would do: each instance whose image's catalog names a newer build (metadata
    /// fetched when older than an hour), in name order. Instances from files, URLs and CoreOS are left out.
    public func upgradePlans() async throws -> [UpgradePlan] {
        let images = try imageStore(refresh: false)
        var plans: [UpgradePlan] = []
        for name in store.names() {
            guard let spec = try? store.loadSpec(name), let state = try? store.loadState(name), !state.deleted,
                !FileManager.default.fileExists(atPath: store.directory(name).ignition.path),
                let digest = state.imageDigest, let cached = await images.entry(digest),
                let update = await images.update(of: cached), update.available
            else { continue }
            plans.append(
                UpgradePlan(
                    name: name.rawValue, fromImage: spec.image, fromBuild: state.imageDescription,
                    toImage: spec.image, toBuild: update.newest))
        }
        return plans
    }

    /// The rollback point's image, as people name it, for `info`.
    func rollbackDescription(_ dir: InstanceDirectory) -> String? {
        let swap = RootSwap(dir: dir)
        guard swap.hasRollback else { return nil }
        return swap.rollbackRecord().map { $0.imageDescription ?? $0.image } ?? "previous root"
    }

    // MARK: Steps

    private func requireUpgradable(_ spec: InstanceSpec, _ dir: InstanceDirectory) throws(NimbusError) {
        guard !FileManager.default.fileExists(atPath: dir.ignition.path) else {
            throw NimbusError(
                .unsupported,
                "\(spec.name) is a CoreOS (Ignition) instance, which updates itself in place (Zincati, rpm-ostree): upgrade is for cloud-init images"
            )
        }
    }

    /// Stops the machine, puts the rollback point back (deleting the newer root), starts it and waits until
    /// it is ready.
    private func returnToRollbackPoint(_ name: InstanceName, timeout: Duration) async throws {
        let clock = ContinuousClock.now
        let seedServer = try await store.withLock(name) { _ in
            let dir = try store.requireExisting(name)
            let swap = RootSwap(dir: dir)
            try finishInterruptedSwap(name)
            guard swap.hasRollback else {
                throw NimbusError(
                    .notFound, "\(name) has no rollback point: `nimbus upgrade \(name)` keeps one when it upgrades")
            }
            let driver = hypervisor.driver(for: try store.loadSpec(name))
            // A new root that never became ready is not shut down politely: it is discarded.
            if await driver.status(of: dir.machine).state != .stopped {
                if (try store.loadState(name)).cloudInitStatus == "done" {
                    try await stopIfRunning(name, dir.machine, driver: driver)
                } else {
                    try await driver.kill(dir.machine)
                }
            }
            try swap.restore()
            try syncRootRecord(name)
            try await deleteUnusedRootDisks(name)
            return try await startMachine(name, clock: clock)
        }
        if let seedServer { try await serveSeed(seedServer, to: name, clock: clock, timeout: timeout) }
        try await waitUntilReady(name, clock: clock, timeout: timeout)
    }

    /// Completes or abandons a root swap a killed `upgrade` or `rollback` left (`RootSwap.finishInterrupted`),
    /// saying what it did, and brings state.json in line with the root. Call it with the lock held.
    func finishInterruptedSwap(_ name: InstanceName) throws(NimbusError) {
        if let done = try RootSwap(dir: store.directory(name)).finishInterrupted() {
            progress("\(name): \(done)")
            try syncRootRecord(name)
        }
    }

    /// Completes or abandons the swaps killed upgrades and rollbacks left among `names` (`list` sorts them out):
    /// each instance whose lock is free; one whose lock is held is being upgraded by that process.
    func finishInterruptedSwaps(_ names: [InstanceName]) async {
        for name in names where RootSwap(dir: store.directory(name)).isUnfinished {
            _ = try? await store.withLockIfFree(name) { _ in try finishInterruptedSwap(name) }
        }
    }

    /// Deletes the disks a driver keeps in its own storage (libvirt's pool) for roots that are neither the
    /// current one nor the rollback point. Call it with the lock held, the machine stopped.
    func deleteUnusedRootDisks(_ name: InstanceName) async throws {
        let dir = store.directory(name)
        guard let storage = hypervisor.driver(for: try store.loadSpec(name)).storage else { return }
        let swap = RootSwap(dir: dir)
        var keys: Set<String?> = [RootSwap.record(at: dir.rootRecord)?.volumeKey]
        if swap.hasRollback { keys.insert(swap.rollbackRecord()?.volumeKey) }
        try await storage.deleteMainDisks(dir.machine, keeping: keys)
    }

    /// Copies what root.json says of the current root into state.json (image, digest, instance-id).
    func syncRootRecord(_ name: InstanceName) throws(NimbusError) {
        guard let record = RootSwap.record(at: store.directory(name).rootRecord) else { return }
        try store.updateState(name) { state in
            state.imageDigest = record.imageDigest
            state.imageDescription = record.imageDescription
            state.seedInstanceID = record.seedInstanceID
            state.cloudInitStatus = nil
        }
    }

    private func rootRecord(of state: InstanceState, spec: InstanceSpec) -> RootRecord {
        RootRecord(
            image: spec.image, imageDigest: state.imageDigest, imageDescription: state.imageDescription,
            seedInstanceID: state.seedInstanceID, generation: 0, madeAt: state.createdAt)
    }

    /// The user-data instance.yaml keeps, to render the seed again from.
    static func userData(of spec: InstanceSpec) throws(NimbusError) -> UserData? {
        guard let bytes = spec.userDataBytes else { return nil }
        do {
            return try UserData(bytes: bytes, source: "the instance's user-data")
        } catch {
            throw error.nimbusError
        }
    }

    /// The host key kept in the instance's folder (since volumes and upgrades), if it is the one known_hosts pins.
    static func storedHostKey(_ dir: InstanceDirectory) -> SSHKeyPair? {
        guard let text = try? String(contentsOf: dir.hostKey, encoding: .utf8),
            let key = try? SSHKeyPair(openSSHPrivateKey: text), isPinned(key, in: dir)
        else { return nil }
        return key
    }

    /// Whether the instance's known_hosts pins `key`.
    static func isPinned(_ key: SSHKeyPair, in dir: InstanceDirectory) -> Bool {
        let pinned = (try? String(contentsOf: dir.knownHosts, encoding: .utf8)) ?? ""
        let fields = key.publicKeyLine.split(separator: " ")
        return fields.count >= 2 && pinned.contains(fields[1])
    }

    /// The instance's SSH host key: kept in its folder since volumes and upgrades; for an instance launched
    /// before, read from the running guest (and kept), checked against the pinned public key.
    private func instanceHostKey(_ name: InstanceName, dir: InstanceDirectory, state: InstanceState)
        async throws -> SSHKeyPair
    {
        if let key = Self.storedHostKey(dir) { return key }
        let running = await hypervisor.driver(dir.machine).status(of: dir.machine).state == .running
        guard running, state.sshPort != nil else {
            throw NimbusError(
                .invalidState,
                "\(name) was launched before Nimbus kept host keys, and its key can only be read from the guest: `nimbus start \(name)`, then upgrade"
            )
        }
        let output = try await sshAccess(name, state: state).run(["sudo", "-n", "cat", "/etc/ssh/ssh_host_ed25519_key"])
        guard output.status == 0, let key = try? SSHKeyPair(openSSHPrivateKey: output.standardOutput),
            Self.isPinned(key, in: dir)
        else {
            throw NimbusError(
                .processFailed,
                "could not read \(name)'s SSH host key from the guest (/etc/ssh/ssh_host_ed25519_key), so the new root could not keep it: \(output.standardError)"
            )
        }
        try AtomicFile.write(Data(key.openSSHPrivateKey.utf8), to: dir.hostKey, permissions: 0o600)
        return key
    }
}
