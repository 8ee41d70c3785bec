import Foundation
import NimbusCore

extension InstanceManager {
    /// `recover --reseed NAME`: the instance's seed made again from its spec with a new instance-id and the
    /// same personality and SSH host key, then the instance started and waited for. cloud-init in the guest
    /// runs as on a first boot (user-data's runcmd too) and writes the pinned host key again, so known_hosts
    /// stays valid: this brings back an SSH server whose key files an unclean stop emptied. The root disk,
    /// volumes, networks and forwards are kept.
    public func reseed(_ name: InstanceName, timeout: Duration) async throws {
        let clock = ContinuousClock.now
        let seedServer = try await store.withLock(name) { _ in
            let dir = try store.requireExisting(name)
            try finishInterruptedSwap(name)
            let spec = try store.loadSpec(name)
            try requireUsable(name, try store.loadState(name))
            guard !FileManager.default.fileExists(atPath: dir.ignition.path) else {
                throw NimbusError(
                    .unsupported,
                    "\(name) is configured by Ignition, which runs on the first boot only: there is no seed to make again; launch a new instance from its image instead"
                )
            }
            guard let hostKey = Self.storedHostKey(dir) else {
                throw NimbusError(
                    .invalidState,
                    "\(name) was launched before Nimbus kept host keys in the instance's folder, so a new seed could not give the guest its key again (known_hosts would no longer match): launch a new instance instead"
                )
            }
            let driver = hypervisor.driver(for: spec)
            try await stopIfRunning(name, dir.machine, driver: driver)
            let state = try store.loadState(name)
            let instanceID = try builder.writeConfiguration(
                spec, ignition: false, user: state.sshUser, userKey: try await installationKey(),
                userData: try Self.userData(of: spec), hostKey: hostKey,
                generation: RootSwap.record(at: dir.rootRecord)?.generation ?? 0,
                salt: Date().formatted(.iso8601), in: dir)
            try store.updateState(name) { state in
                state.seedInstanceID = instanceID
                state.cloudInitStatus = nil
                state.lastError = nil
            }
            // The root's record names its seed: a rollback point made later keeps this one.
            if var record = RootSwap.record(at: dir.rootRecord) {
                record.seedInstanceID = instanceID
                try RootSwap.write(record, to: dir.rootRecord)
            }
            progress("\(name): a new seed (instance-id \(instanceID ?? "-")) with the same personality and host key")
            return try await startMachine(name, clock: clock)
        }
        if let seedServer { try await serveSeed(seedServer, to: name, clock: clock, timeout: timeout) }
        try await waitUntilReady(name, clock: clock, timeout: timeout)
    }
}
