import CLibvirt
import Foundation
import NimbusCore
import NimbusMachines

extension LibvirtDriver {
    // MARK: snapshots

    public func saveSnapshot(_ name: String, in directory: MachineDirectory) async throws(NimbusError) {
        try await LibvirtExecutor.run(uri) { () throws(NimbusError) in
            let domain = try running(directory, "save snapshot \(name)")
            // libvirt 9.0 refuses internal snapshots of a domain with pflash firmware (its NVRAM is raw; qcow2
            // NVRAM came in 9.2), so say so before it does, with the ways that work.
            if FileManager.default.fileExists(atPath: directory.url.appending(path: LibvirtDomainXML.nvramName).path) {
                throw NimbusError(
                    .unsupported,
                    "libvirt cannot take a live snapshot of UEFI machine \(domain.name) (its UEFI variables are a raw file): stop the instance and snapshot it while stopped, or use --driver qemu for live snapshots"
                )
            }
            let xml = "<domainsnapshot><name>\(LibvirtDomainXML.escape(name))</name></domainsnapshot>"
            guard let snapshot = libvirt.virDomainSnapshotCreateXML(domain.pointer, xml, 0) else {
                let error = LibvirtError.last("virDomainSnapshotCreateXML")
                throw NimbusError(
                    .processFailed,
                    "libvirt could not save snapshot \(name) of domain \(domain.name): \(error.message)",
                    cause: error)
            }
            _ = libvirt.virDomainSnapshotFree(snapshot)
        }
    }

    public func loadSnapshot(_ name: String, in directory: MachineDirectory) async throws(NimbusError) {
        try await LibvirtExecutor.run(uri) { () throws(NimbusError) in
            let domain = try running(directory, "load snapshot \(name)")
            let snapshot = try Self.snapshot(name, of: domain)
            defer { _ = libvirt.virDomainSnapshotFree(snapshot) }
            try domain.call("revert to snapshot \(name) of", "virDomainRevertToSnapshot") { _ in
                libvirt.virDomainRevertToSnapshot(snapshot, 0)
            }
        }
    }

    public func deleteSnapshot(_ name: String, in directory: MachineDirectory) async throws(NimbusError) {
        try await LibvirtExecutor.run(uri) { () throws(NimbusError) in
            let domain = try running(directory, "delete snapshot \(name)")
            let snapshot = try Self.snapshot(name, of: domain)
            defer { _ = libvirt.virDomainSnapshotFree(snapshot) }
            try domain.call("delete snapshot \(name) of", "virDomainSnapshotDelete") { _ in
                libvirt.virDomainSnapshotDelete(snapshot, 0)
            }
        }
    }

    private static func snapshot(_ name: String, of domain: LibvirtDomain) throws(NimbusError) -> virDomainSnapshotPtr {
        guard let snapshot = libvirt.virDomainSnapshotLookupByName(domain.pointer, name, 0) else {
            let error = LibvirtError.last("virDomainSnapshotLookupByName")
            throw NimbusError(
                .notFound, "domain \(domain.name) has no snapshot \(name): \(error.message)", cause: error)
        }
        return snapshot
    }

    // MARK: stop

    /// How often the stop ladder looks at the domain's state.
    static let pollInterval: Duration = .milliseconds(250)
    /// How long the graceful destroy (SIGTERM) may take before the forced one.
    static let rungTimeout: Duration = .seconds(10)

    /// The QEMU driver's ladder, through libvirt: the ACPI power button (`virDomainShutdownFlags` with
    /// ACPI_POWER_BTN) and a wait up to `timeout`, then `virDomainDestroyFlags(GRACEFUL)` (SIGTERM), then
    /// `virDomainDestroy` (SIGKILL).
    public func stop(
        _ directory: MachineDirectory, timeout: Duration = .seconds(60), progress: (@Sendable (String) -> Void)? = nil
    ) async throws(NimbusError) -> StopOutcome {
        return try await LibvirtExecutor.run(uri) { () throws(NimbusError) -> StopOutcome in
            var steps: [String] = []
            func log(_ step: String) {
                steps.append(step)
                progress?(step)
            }
            guard let domain = try ownedDomain(directory), domain.isActive else {
                return StopOutcome(endedBy: .alreadyStopped, shutdownReason: nil, steps: ["not running"])
            }
            var endedBy: StopOutcome.Rung?
            var reason: String?
            if libvirt.virDomainShutdownFlags(domain.pointer, UInt32(VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN.rawValue)) == 0
            {
                log(
                    "pressed the ACPI power button (virDomainShutdown); waiting up to \(timeout) for the guest to shut down"
                )
                if await Self.waitUntilGone(domain, timeout: timeout) {
                    log("the guest shut down")
                    endedBy = .guestShutdown
                    reason = "guest-shutdown"
                } else {
                    log("no shutdown within \(timeout)")
                }
            } else {
                log(
                    "the power button failed (\(LibvirtError.last("virDomainShutdownFlags").message)); destroying the domain"
                )
            }
            if endedBy == nil, domain.isActive {
                log("destroying domain \(domain.name) gracefully (SIGTERM to QEMU)")
                if libvirt.virDomainDestroyFlags(domain.pointer, UInt32(VIR_DOMAIN_DESTROY_GRACEFUL.rawValue)) == 0,
                    await Self.waitUntilGone(domain, timeout: Self.rungTimeout)
                {
                    endedBy = .terminate
                    reason = "host-signal"
                } else {
                    libvirt.virResetLastError()
                }
            }
            if endedBy == nil, domain.isActive {
                log("destroying domain \(domain.name) (SIGKILL to QEMU)")
                try domain.call("destroy", "virDomainDestroy") { libvirt.virDomainDestroy($0) }
                endedBy = .kill
                reason = "host-signal"
            }
            SerialLog.trim(directory.serialLog, limit: MachineConfig.Console().logLimit)
            return StopOutcome(endedBy: endedBy ?? .guestShutdown, shutdownReason: reason, steps: steps)
        }
    }

    /// Waits until the domain no longer runs (it is then shut off, still defined).
    private static func waitUntilGone(_ domain: LibvirtDomain, timeout: Duration) async -> Bool {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            if !domain.isActive { return true }
            try? await Task.sleep(for: pollInterval)
        }
        return !domain.isActive
    }
}
