import Foundation
import NimbusCore

/// What `apply` did.
public struct ApplyReport: Sendable {
    /// The instances launched and ready, sorted by name.
    public var launched: [InstanceName] = []
    /// The file's instances that existed already, left alone.
    public var unchanged: [InstanceName] = []
    /// The file's instances that existed with another image than the file now names, upgraded to it
    /// (`upgrade --image`), sorted by name.
    public var upgraded: [InstanceName] = []
    /// The instances launched from this file that it no longer lists, purged by `prune`.
    public var pruned: [InstanceName] = []
    /// The instances that could not be launched (or pruned), each with its error.
    public var failures: [(InstanceName, NimbusError)] = []
    /// The file's networks that were missing and were made.
    public var networksCreated: [String] = []
    /// The networks this file made that no instance uses any more, deleted by `prune`.
    public var networksPruned: [String] = []
    /// The networks `prune` could not delete, each with its error. A network that could not be made
    /// is in `failures`, under each instance on it.
    public var networkFailures: [(String, NimbusError)] = []
}

extension InstanceManager {
    /// Launches the fleet's instances that do not exist yet, in parallel; upgrades, one at a time, existing ones
    /// whose image the file changed (`confirm` sees each plan first, as for `upgrade`); leaves the others
    /// alone; with `prune`, purges the instances launched from this file that it no longer lists.
    public func apply(
        _ fleet: FleetFile, prune: Bool, timeout: Duration,
        confirm: @escaping @Sendable (UpgradePlan) async throws -> Void = { _ in }
    ) async -> ApplyReport {
        var report = ApplyReport()
        // The file's networks first: an instance on one that cannot be made fails, the others go on.
        var failedNetworks: [String: NimbusError] = [:]
        for network in fleet.networks where !networks.store.exists(network.name) {
            // Made by the driver (and on the daemon) of the first instance on it.
            let user = fleet.specs.first { $0.networks.contains { $0.network == network.name } }
            do {
                try await networks.create(
                    name: network.name, subnet: network.subnet, nat: network.nat,
                    driver: user?.driver ?? .qemu, fleet: fleet.url.path)
                report.networksCreated.append(network.name)
            } catch {
                failedNetworks[network.name] = Self.wrap(error)
            }
        }
        for spec in fleet.specs where !store.exists(spec.name) {
            if let failed = spec.networks.first(where: { failedNetworks[$0.network] != nil }) {
                let cause = failedNetworks[failed.network]!
                report.failures.append(
                    (
                        spec.name,
                        NimbusError(cause.code, "network \(failed.network) could not be made: \(cause.message)")
                    ))
            }
        }
        let missing = fleet.specs.filter { spec in
            !store.exists(spec.name) && !report.failures.contains { $0.0 == spec.name }
        }
        let existing = fleet.specs.filter { store.exists($0.name) }
        for spec in existing {
            guard let current = try? store.loadSpec(spec.name), current.image != spec.image else {
                report.unchanged.append(spec.name)
                continue
            }
            progress("\(spec.name): the fleet file names \(spec.image), the instance runs \(current.image): upgrading")
            do {
                try await upgrade(spec.name, to: spec.image, timeout: timeout, confirm: confirm)
                report.upgraded.append(spec.name)
            } catch {
                report.failures.append((spec.name, Self.wrap(error)))
            }
        }
        // Pull each distinct image once before the parallel launches, so they share one download.
        for image in Set(missing.map(\.image)) {
            do {
                _ = try await pullImage(image)
            } catch {
                for spec in missing where spec.image == image { report.failures.append((spec.name, Self.wrap(error))) }
            }
        }
        let ready = missing.filter { spec in !report.failures.contains { $0.0 == spec.name } }
        await withTaskGroup(of: (InstanceName, NimbusError?).self) { group in
            for spec in ready {
                group.addTask {
                    do {
                        try await launch(
                            spec, volumeSizes: fleet.volumeSizes[spec.name] ?? [:], wait: true, timeout: timeout)
                        return (spec.name, nil)
                    } catch {
                        return (spec.name, Self.wrap(error))
                    }
                }
            }
            for await (name, error) in group {
                if let error { report.failures.append((name, error)) } else { report.launched.append(name) }
            }
        }
        if prune {
            let listed = Set(fleet.specs.map(\.name))
            for name in store.names() where !listed.contains(name) {
                guard (try? store.loadSpec(name))?.fleet == fleet.url.path else { continue }
                do {
                    try await delete(name, purge: true)
                    report.pruned.append(name)
                } catch {
                    report.failures.append((name, Self.wrap(error)))
                }
            }
        }
        if prune {
            // Networks this file made that no instance uses any more (pruned ones gave their addresses back).
            for name in networks.store.names() {
                guard let spec = try? networks.store.load(name), spec.fleet == fleet.url.path,
                    networks.store.hosts(spec).isEmpty
                else { continue }
                do {
                    try await networks.delete(name)
                    report.networksPruned.append(name)
                } catch {
                    report.networkFailures.append((name, Self.wrap(error)))
                }
            }
        }
        report.launched.sort()
        return report
    }

    static func wrap(_ error: any Error) -> NimbusError {
        (error as? NimbusError) ?? NimbusError(.internalError, "\(error)")
    }
}
