import Foundation
import NimbusCore
import NimbusTestSupport
import Testing

@testable import NimbusLibvirt
@testable import NimbusMachines

/// The libvirt driver's calls run on its executors, off Swift's cooperative pool. Against libvirt's own test
/// driver (`test:///default`: an in-process fake host of libvirt's, no daemon), which no other test uses, so
/// the count of connections opened off the executors is this suite's alone.
@Suite("libvirt calls off the cooperative pool", .serialized, .requires(.programs("virsh")))
struct LibvirtExecutorTests {
    static let uri = "test:///default"

    @Test("run's body, and what it calls, runs on the executor of its URI; the caller's thread does not")
    func runsOnItsExecutor() async {
        #expect(LibvirtExecutor.current == nil)
        let inside = await LibvirtExecutor.answer(Self.uri) { LibvirtExecutor.current }
        #expect(inside == Self.uri)
        let nested = await LibvirtExecutor.answer("qemu:///system") {
            await LibvirtExecutor.answer(Self.uri) { LibvirtExecutor.current }
        }
        #expect(nested == Self.uri)
        #expect(LibvirtExecutor.current == nil)
    }

    @Test(
        "calls blocked on the executor leave the cooperative pool free: more of them than cores wait until a task on the pool releases them",
        .timeLimit(.minutes(1)))
    func blockingDoesNotStallThePool() async {
        let blockers = ProcessInfo.processInfo.activeProcessorCount + 2
        let gate = DispatchSemaphore(value: 0)
        let released = await withTaskGroup(of: Bool.self, returning: Int.self) { group in
            for _ in 0..<blockers {
                group.addTask {
                    await LibvirtExecutor.answer(Self.uri) {
                        gate.wait()
                        return true
                    }
                }
            }
            // Were the blockers on the pool, they would hold all its threads and this task would never run: the
            // test would hang until its time limit.
            group.addTask {
                for _ in 0..<blockers { gate.signal() }
                return false
            }
            var count = 0
            for await result in group where result { count += 1 }
            return count
        }
        #expect(released == blockers)
    }

    @Test(
        "the driver's, its networks' and its definitions' entry points open their connections on the executor, and the host's memory comes from libvirt"
    )
    func entryPointsUseTheExecutor() async throws {
        let before = LibvirtConnection.openedOffExecutor.withLock { $0[Self.uri] ?? 0 }
        let driver = LibvirtDriver(uri: Self.uri, hostFactsCache: nil)
        try await driver.checkReachable()
        // The test driver's host: 3 GiB (`virsh -c test:///default nodeinfo`).
        #expect(try await driver.hostMemory() == .gibibytes(3))
        let networks = LibvirtNetworks(uri: Self.uri)
        #expect(await networks.createProblem() == nil)
        _ = await networks.hostSubnets()
        let definitions = LibvirtDefinitions(uri: Self.uri)
        #expect(try await definitions.definedMachines().isEmpty)
        #expect(try await definitions.definition(of: "web") == .none)
        let after = LibvirtConnection.openedOffExecutor.withLock { $0[Self.uri] ?? 0 }
        #expect(after == before)
        // And the count does see a connection opened on the pool.
        _ = try LibvirtConnection(uri: Self.uri)
        #expect(LibvirtConnection.openedOffExecutor.withLock { $0[Self.uri] ?? 0 } == before + 1)
    }
}
