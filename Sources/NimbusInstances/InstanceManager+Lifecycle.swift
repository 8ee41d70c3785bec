import Foundation
import NimbusCore
import NimbusMachines

extension InstanceManager {
    /// Stops an instance: ACPI power-off, then the machine driver's ladder (quit, SIGTERM, SIGKILL) after
    /// `timeout`; `force` skips to the end. Stopping a stopped instance is not an error.
    public func stop(_ name: InstanceName, force: Bool, timeout: Duration) async throws {
        try await store.withLock(name) { _ in
            let dir = store.directory(name)
            let state = try store.loadState(name)
            if let port = state.sshPort {
                await sshAccess(name, state: state, port: port).closeSharedConnection()
            }
            let driver = hypervisor.driver(dir.machine)
            guard await driver.status(of: dir.machine).state != .stopped else {
                progress("\(name) is stopped already")
                return
            }
            if force {
                try await driver.kill(dir.machine)
                progress("\(name): stopped (forced)")
            } else {
                let report = progress
                let outcome = try await driver.stop(dir.machine, timeout: timeout) {
                    report("\(name): \($0)")
                }
                progress("\(name): stopped (\(outcome.endedBy.rawValue))")
            }
        }
    }

    /// Pauses a running instance's vCPUs.
    public func suspend(_ name: InstanceName) async throws {
        try await store.withLock(name) { _ in
            let dir = store.directory(name)
            let driver = hypervisor.driver(dir.machine)
            switch await driver.status(of: dir.machine).state {
            case .running: try await driver.suspend(dir.machine)
            case .paused: progress("\(name) is suspended already")
            case .stopped: throw NimbusError(.invalidState, "\(name) is stopped, not running: nothing to suspend")
            default: throw NimbusError(.invalidState, "\(name) is not running: it cannot be suspended now")
            }
        }
    }

    /// Resumes a suspended instance.
    public func resume(_ name: InstanceName) async throws {
        try await store.withLock(name) { _ in
            let dir = store.directory(name)
            let driver = hypervisor.driver(dir.machine)
            switch await driver.status(of: dir.machine).state {
            case .paused: try await driver.resume(dir.machine)
            case .running: progress("\(name) is running already")
            case .stopped: throw NimbusError(.invalidState, "\(name) is stopped, not suspended: `nimbus start \(name)`")
            default: throw NimbusError(.invalidState, "\(name) is not suspended: it cannot be resumed now")
            }
        }
    }

    /// Deletes an instance: stops it, then marks it deleted (recoverable until `purge`), or with `purge`
    /// removes it and its disks.
    public func delete(_ name: InstanceName, purge: Bool) async throws {
        try await store.withLock(name) { lock in
            let dir = try store.requireExisting(name)
            if let state = try? store.loadState(name), let port = state.sshPort {
                await sshAccess(name, state: state, port: port).closeSharedConnection()
            }
            let driver = hypervisor.driver(dir.machine)
            let spec = try? store.loadSpec(name)
            if purge {
                // Data volumes outlive the instance, so what the guest wrote to them must reach them: it is shut
                // down first (its filesystems flushed), not killed.
                if !(spec?.volumes ?? []).isEmpty { try await stopIfRunning(name, dir.machine, driver: driver) }
                // Ends the machine and, for libvirt, undefines its domain (with its NVRAM) and deletes its
                // volumes from the pool before the folder goes; a daemon that does not answer keeps all three.
                try await driver.forget(dir.machine)
                try await driver.storage?.deleteStorage(dir.machine)
                let attachments = spec?.networks ?? []
                try store.remove(name, lock: lock)
                await networks.release(attachments, of: name)
                if let place = driver.definitions?.place { await forgetPlaceIfUnused(place) }
                progress("\(name): purged")
                // Volumes outlive the instance: given back, never deleted.
                for volume in await volumes.detach(from: name) {
                    progress(
                        "\(name): volume \(volume) remains, with its data (`nimbus launch --volume \(volume):PATH` mounts it again, `nimbus volume delete \(volume)` removes it)"
                    )
                }
            } else {
                try await stopIfRunning(name, dir.machine, driver: driver)
                // A libvirt domain stays defined (shut off) until purge, so recover brings the instance back whole.
                try store.updateState(name) { $0.deleted = true }
                progress(
                    "\(name): deleted (`nimbus recover \(name)` brings it back, `nimbus purge` removes it for good)")
            }
        }
    }

    /// Stops `name`'s machine politely (the guest shuts down, flushing its filesystems) if it runs, reporting
    /// each step of the ladder.
    func stopIfRunning(_ name: InstanceName, _ machine: MachineDirectory, driver: any Hypervisor)
        async throws(NimbusError)
    {
        guard await driver.status(of: machine).state != .stopped else { return }
        let report = progress
        _ = try await driver.stop(machine, timeout: .seconds(config.stopTimeout)) { report("\(name): \($0)") }
    }

    /// Brings back a deleted instance, or repairs one in the error state: a QEMU left without its state is
    /// ended, the error cleared, the instance left stopped.
    public func recover(_ name: InstanceName) async throws {
        try await store.withLock(name) { _ in
            let dir = try store.requireExisting(name)
            try finishInterruptedSwap(name)
            var state: InstanceState
            var rebuilt = false
            do {
                state = try store.loadState(name)
            } catch {
                state = await rebuiltState(name, from: definedMachine(of: dir))
                rebuilt = true
            }
            if state.deleted {
                state.deleted = false
                try store.saveState(state, in: dir)
                progress("\(name): recovered")
                return
            }
            let driver = hypervisor.driver(dir.machine)
            let status = await driver.status(of: dir.machine)
            if status.state == .unresponsive || status.state == .crashed {
                try await driver.kill(dir.machine)
            }
            guard
                rebuilt || state.lastError != nil || !state.complete || status.state == .unresponsive
                    || status.state == .crashed
            else {
                progress("\(name) needs no recovery")
                return
            }
            state.lastError = nil
            state.complete = true
            try store.saveState(state, in: dir)
            progress(
                "\(name): recovered\(rebuilt ? " (its damaged state.json made again from its folder)" : ""); `nimbus start \(name)` starts it"
            )
        }
    }

    /// Removes every deleted instance for good; returns their names.
    public func purge() async throws -> [InstanceName] {
        var purged: [InstanceName] = []
        for name in store.names() where (try? store.loadState(name))?.deleted == true {
            try await delete(name, purge: true)
            purged.append(name)
        }
        return purged
    }
}
