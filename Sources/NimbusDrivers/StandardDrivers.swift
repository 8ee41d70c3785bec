import Foundation
import NimbusCore
import NimbusInstances
import NimbusLibvirt
import NimbusMachines
import NimbusQEMU

/// The drivers Nimbus ships, by `DriverChoice`: the one place that knows them all. The CLI hands it to
/// `InstanceManager`; a new driver is a target of its own and a case here.
public struct StandardDrivers: MachineDrivers {
    /// Where the accelerator facts are cached (NimbusPaths.hostFacts); nil probes every time.
    public var hostFactsCache: URL?

    public init(hostFactsCache: URL?) { self.hostFactsCache = hostFactsCache }

    public func driver(for choice: DriverChoice, progress: @escaping @Sendable (String) -> Void) -> any Hypervisor {
        switch choice {
        case .qemu:
            return QEMUDriver(hostFactsCache: hostFactsCache)
        case .libvirt(let connect, let pool):
            var driver = LibvirtDriver(uri: connect ?? LibvirtDriver.defaultURI, hostFactsCache: hostFactsCache)
            driver.pool = pool ?? LibvirtStorage.defaultPool
            driver.progress = progress
            return driver
        }
    }

    public func hostDrivers() -> [any Hypervisor] {
        [driver(for: .qemu) { _ in }, driver(for: .libvirt(connect: nil, pool: nil)) { _ in }]
    }

    /// A libvirt URI: the only driver whose machines are defined outside their folder.
    public func definitions(at place: String) -> (any MachineDefinitions)? { LibvirtDefinitions(uri: place) }
}

extension InstanceManager {
    /// A manager of the instances under `paths` with the drivers Nimbus ships.
    public init(paths: NimbusPaths, config: NimbusConfig, progress: @escaping @Sendable (String) -> Void = { _ in }) {
        self.init(
            paths: paths, config: config, drivers: StandardDrivers(hostFactsCache: paths.hostFacts), progress: progress)
    }
}
