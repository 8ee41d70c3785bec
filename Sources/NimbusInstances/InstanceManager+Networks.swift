import Foundation
import NimbusCore
import NimbusMachines
import NimbusSeed

/// An instance's NICs on host networks: what its guest is told, what its machine gets.
extension InstanceManager {
    /// The machine's NICs on the instance's networks, once each network runs.
    func machineAttachments(_ spec: InstanceSpec) async throws(NimbusError) -> [MachineConfig.Network.Attachment] {
        try await networks.prepare(spec.networks, of: spec.name).map {
            MachineConfig.Network.Attachment(network: $0.spec.name, bridge: $0.spec.bridge, macAddress: $0.macAddress)
        }
    }
}
