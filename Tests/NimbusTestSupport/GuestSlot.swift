import Foundation
import NimbusCore

/// One of a few slots for tests that boot guests, held for the life of the test's suite instance (Swift
/// Testing makes one per test) and released when it goes. Test targets run in parallel in one process, and
/// more than two TCG guests booting at once on a 2-core host starve their vCPUs: a Debian kernel then fails
/// its timer check and panics ("IO-APIC + timer doesn't work!"), which CI met once.
public final class GuestSlot: Sendable {
    /// How many guest-booting tests may run at once.
    public static let count = 2

    let descriptor: Int32

    static func path(_ index: Int) -> String { "/tmp/nimbus-tests-guest-slot-\(index).lock" }

    /// Waits for a free slot (a flock on one of `count` files in /tmp), for at most an hour.
    public init() async throws {
        descriptor = try await TestLock.acquire(anyOf: (0..<Self.count).map(Self.path), LOCK_EX)
    }

    private init(index: Int) async throws {
        descriptor = try await TestLock.acquire(anyOf: [Self.path(index)], LOCK_EX)
    }

    /// Every slot, for a test that boots two guests itself or needs the host to itself. Taken in index
    /// order, so two tests asking for all never each hold one and wait for the other.
    public static func all() async throws -> [GuestSlot] {
        var slots: [GuestSlot] = []
        for index in 0..<count { slots.append(try await GuestSlot(index: index)) }
        return slots
    }

    deinit { close(descriptor) }
}
