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

    /// Waits for a free slot (a flock on one of `count` files in /tmp), for at most an hour.
    public init() async throws {
        descriptor = try await TestLock.acquire(
            anyOf: (0..<Self.count).map { "/tmp/nimbus-tests-guest-slot-\($0).lock" }, LOCK_EX)
    }

    deinit { close(descriptor) }
}
