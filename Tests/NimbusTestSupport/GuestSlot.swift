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
        let deadline = ContinuousClock.now + .seconds(3600)
        while true {
            for index in 0..<Self.count {
                let path = URL(fileURLWithPath: "/tmp/nimbus-tests-guest-slot-\(index).lock")
                let fd = open(path.path, O_CREAT | O_RDWR | O_CLOEXEC, 0o644)
                guard fd >= 0 else { throw posixFailure("open", path) }
                if flock(fd, LOCK_EX | LOCK_NB) == 0 {
                    descriptor = fd
                    return
                }
                close(fd)
            }
            guard ContinuousClock.now < deadline else {
                throw NimbusError(.timeout, "no guest slot came free in an hour (/tmp/nimbus-tests-guest-slot-*.lock)")
            }
            try await Task.sleep(for: .milliseconds(250))
        }
    }

    deinit { close(descriptor) }
}
