import Foundation
import NimbusCore
import NimbusMachines
import NimbusSeed

/// `launch --seed-over-http`: no seed disk; the NoCloud files live in the instance's `seed/` folder and
/// Nimbus serves them on 127.0.0.1 (the guest's 10.0.2.2) while the guest fetches them.
///
/// Nimbus has no daemon, so the server lives only inside the `launch` or `start` that boots the machine:
/// it runs until cloud-init has fetched meta-data, user-data and vendor-data, then stops. cloud-init reads
/// its datasource at every boot, so every `nimbus start` serves the seed again; a reboot from inside the
/// guest finds no server (cloud-init then keeps its cached instance data).
extension InstanceManager {
    /// Starts serving `name`'s seed folder when its spec asks for the seed over HTTP; nil otherwise.
    func startSeedServer(_ name: InstanceName, spec: InstanceSpec) async throws(NimbusError) -> SeedServer? {
        guard spec.seedTransport == .http else { return nil }
        let folder = InstanceBuilder.seedFolder(store.directory(name))
        do {
            return try await SeedServer.start(folder: folder)
        } catch .cannotListen(let reason) {
            throw NimbusError(.network, "cannot serve the seed of \(name) on 127.0.0.1: \(reason)")
        } catch {
            throw NimbusError(
                .notFound,
                "\(name) was launched with --seed-over-http but its seed folder is incomplete (\(error)): "
                    + "`nimbus delete --purge \(name)` and launch it again",
                cause: error)
        }
    }

    /// Keeps `server` up until the guest of `name` has fetched its seed, the deadline passes or the machine
    /// stops, then shuts it down whatever happened.
    func serveSeed(_ server: SeedServer, to name: InstanceName, clock: ContinuousClock.Instant, timeout: Duration)
        async throws
    {
        progress("\(name): serving the seed at \(server.guestURL) until the guest has fetched it")
        let machineDir = store.directory(name).machine
        let serialLog = store.directory(name).serialLog.path
        let driver = hypervisor.driver(machineDir)
        do {
            try await server.waitUntilFetched(timeout: timeout - (.now - clock)) {
                await driver.isRunning(machineDir)
            }
        } catch let error as SeedServerError {
            await server.shutdown()
            guard case .notFetched(let missing, _, let url, let clientGone) = error else {
                throw NimbusError(.network, "\(error)")
            }
            let files = missing.map(\.rawValue).joined(separator: ", ")
            if clientGone {
                throw NimbusError(
                    .processFailed,
                    "\(name) stopped before its guest fetched \(files) from \(url): \(serialLog) shows its boot",
                    cause: error)
            }
            throw NimbusError(
                .timeout,
                "the guest of \(name) did not fetch \(files) from \(url) in time: its cloud-init may lack NoCloud over "
                    + "HTTP (ds=nocloud-net) or its network did not come up (\(serialLog) shows its boot). It is left "
                    + "running: `nimbus stop \(name)`, then `nimbus start \(name)` serves the seed again",
                cause: error)
        } catch {
            await server.shutdown()
            throw error
        }
        await server.shutdown()
        progress("\(name): seed fetched over HTTP (\(elapsed(since: clock)))")
    }
}
