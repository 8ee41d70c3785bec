import Foundation
import NimbusCore
import Testing

/// One of a few slots for tests that boot guests, held for the life of the test's suite instance (Swift
/// Testing makes one per test) and released when it goes. Test targets run in parallel in one process, and
/// more than two TCG guests booting at once on a 2-core host starve their vCPUs: a Debian kernel then fails
/// its timer check and panics ("IO-APIC + timer doesn't work!"), which CI met once.
public final class GuestSlot: Sendable {
    /// How many guest-booting tests may run at once.
    public static let count = 2

    let descriptor: Int32
    /// The test holding the slot and since when: the slot says how long it held it when it goes, so a CI log
    /// tells which tests spend the guest time, apart from the time they waited for a slot.
    let holder: String
    let taken: ContinuousClock.Instant

    static func path(_ index: Int) -> String { "/tmp/nimbus-tests-guest-slot-\(index).lock" }

    /// The queue every test waits in before it takes a slot, held while it waits for its slots and let go
    /// once it has them. Without it a test that needs every slot starves: flock is not fair, and while it
    /// held slot 0 waiting for slot 1, tests taking one slot kept winning slot 1 and slot 0 stood idle (the
    /// landing CI of session 14: two tests gave up after an hour, and the run took 82 min).
    static let queuePath = "/tmp/nimbus-tests-guest-slot-queue.lock"

    /// Waits its turn, then for a free slot (a flock on one of `count` files in /tmp), for at most an hour.
    public init() async throws {
        let queue = try await TestLock.acquire(anyOf: [Self.queuePath], LOCK_EX)
        defer { close(queue) }
        descriptor = try await TestLock.acquire(anyOf: (0..<Self.count).map(Self.path), LOCK_EX)
        holder = Test.current.map { $0.displayName ?? $0.name } ?? "a test"
        taken = .now
    }

    private init(index: Int) async throws {
        descriptor = try await TestLock.acquire(anyOf: [Self.path(index)], LOCK_EX)
        holder = Test.current.map { $0.displayName ?? $0.name } ?? "a test"
        taken = .now
    }

    /// Every slot, for a test that boots two guests itself. Taken in its turn in the queue, so the tests
    /// behind it wait while the running ones finish.
    public static func all() async throws -> [GuestSlot] {
        let queue = try await TestLock.acquire(anyOf: [queuePath], LOCK_EX)
        defer { close(queue) }
        var slots: [GuestSlot] = []
        for index in 0..<count { slots.append(try await GuestSlot(index: index)) }
        return slots
    }

    deinit {
        let held = (ContinuousClock.now - taken).components.seconds
        print("guest slot held \(held) s by \"\(holder.prefix(80))\"")
        close(descriptor)
    }
}
