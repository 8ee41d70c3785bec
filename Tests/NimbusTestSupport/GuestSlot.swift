import Foundation
import NimbusCore
import Testing

/// Guest slots, held by a test while its guests boot and run, and released when the value goes (Swift Testing
/// makes one suite instance per test, so a slot taken in a suite's init lasts for that one test).
///
/// A slot is one TCG guest's worth of CPU on CI's two cores: two slots. Measured on this host (2026-12-07,
/// the Debian 12 guest, one vCPU, `nimbus launch` to cloud-init's end): one guest alone 107 s and 108 CPU-s;
/// two at once 154 s for both, 134-152 CPU-s each; three at once 278 s for the three, 170-190 CPU-s each. A
/// third guest on two cores does not fill idle time, it makes every guest's TCG slower (caches, switches):
/// 93 s of wall time per boot against 77 s with two. More guests booting at once also starve their vCPUs
/// until a Debian kernel fails its early timer check ("IO-APIC + timer doesn't work!"; Readiness resets such
/// a guest, twice at most).
///
/// Tests take their slots longest first (`expectedSeconds`), so that no long test starts last and runs alone
/// at the end of a CI run, and a test needing several slots does not hold one idle while it waits for the
/// rest behind a long test.
public final class GuestSlot: Sendable {
    /// How many guests may run at once.
    public static let count = 2

    let descriptors: [Int32]
    /// The test holding the slots and since when: the slots say how long they were held when they go, so a
    /// CI log tells which tests spend the guest time, apart from the time they waited.
    let holder: String
    let taken: ContinuousClock.Instant

    static func path(_ index: Int) -> String { "/tmp/nimbus-tests-guest-slot-\(index).lock" }

    /// The lock a test holds while it takes its slots, across test processes: flock is not fair, and a test
    /// needing two slots would otherwise starve while tests taking one kept winning the second.
    static let queuePath = "/tmp/nimbus-tests-guest-slot-queue.lock"

    /// Waits for `guests` slots (every slot at most), behind the tests of this process that expect to hold
    /// theirs longer.
    ///
    /// - Parameters:
    ///   - guests: how many guests the test runs at once.
    ///   - expectedSeconds: about how long the test holds its slots, as a CI log's "guest slot held" lines
    ///     say; the longest go first.
    public init(guests: Int = 1, expectedSeconds: Int) async throws {
        let wanted = min(max(guests, 1), Self.count)
        let ticket = await GuestQueue.shared.enter(priority: expectedSeconds, everySlot: wanted == Self.count)
        do {
            while await !GuestQueue.shared.isNext(ticket) { try await Task.sleep(for: .milliseconds(100)) }
            let queue = try await TestLock.acquire(anyOf: [Self.queuePath], LOCK_EX)
            defer { close(queue) }
            var held: [Int32] = []
            var free = Array(0..<Self.count)
            do {
                while held.count < wanted {
                    let (index, descriptor) = try await TestLock.acquireIndex(anyOf: free.map(Self.path), LOCK_EX)
                    held.append(descriptor)
                    free.remove(at: index)
                }
            } catch {
                for descriptor in held { close(descriptor) }
                throw error
            }
            descriptors = held
        } catch {
            await GuestQueue.shared.leave(ticket)
            throw error
        }
        await GuestQueue.shared.leave(ticket)
        holder = Test.current.map { $0.displayName ?? $0.name } ?? "a test"
        taken = .now
    }

    deinit {
        let held = (ContinuousClock.now - taken).components.seconds
        // On stderr: the test process's stdout reaches a CI log through a pipe, block-buffered, in bursts.
        FileHandle.standardError.write(
            Data("guest slot held \(held) s by \"\(holder.prefix(80))\" (\(descriptors.count) of \(Self.count))\n".utf8)
        )
        for descriptor in descriptors { close(descriptor) }
    }
}

/// The order this process's tests take their guest slots in: a test needing every slot first (it would
/// otherwise wait for every running test to end, and the others with it), then the one expecting to hold its
/// slots longest, then the one that came first. Nobody goes in the first seconds of a run, while the tests
/// that start together are still coming in.
actor GuestQueue {
    static let shared = GuestQueue()

    private struct Waiter {
        let ticket: Int
        let everySlot: Bool
        let priority: Int

        func goesBefore(_ other: Waiter) -> Bool {
            if everySlot != other.everySlot { return everySlot }
            if priority != other.priority { return priority > other.priority }
            return ticket < other.ticket
        }
    }

    private var waiters: [Waiter] = []
    private var lastTicket = 0
    private var opened: ContinuousClock.Instant?

    func enter(priority: Int, everySlot: Bool) -> Int {
        lastTicket += 1
        waiters.append(Waiter(ticket: lastTicket, everySlot: everySlot, priority: priority))
        if opened == nil { opened = .now + .seconds(3) }
        return lastTicket
    }

    func isNext(_ ticket: Int) -> Bool {
        guard let opened, ContinuousClock.now >= opened else { return false }
        return waiters.min { $0.goesBefore($1) }?.ticket == ticket
    }

    func leave(_ ticket: Int) {
        waiters.removeAll { $0.ticket == ticket }
    }
}
