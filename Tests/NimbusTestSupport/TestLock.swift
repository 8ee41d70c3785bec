import Foundation
import NimbusCore

/// flock-based locks shared by tests across test targets (they run in parallel in one process) and test
/// processes: `LibvirtDaemon.Lease` and `GuestSlot`.
enum TestLock {
    /// Waits until `operation` (LOCK_SH or LOCK_EX) is held on one of `paths`, trying them in order; returns
    /// the open descriptor, whose closing releases the lock.
    static func acquire(anyOf paths: [String], _ operation: Int32) async throws -> Int32 {
        try await acquireIndex(anyOf: paths, operation).descriptor
    }

    /// `acquire`, also saying which of `paths` it holds. It waits at most four hours: longer than any CI run
    /// (a whole run's guest tests may wait in line for a slot), short of forever on a developer's machine.
    static func acquireIndex(anyOf paths: [String], _ operation: Int32) async throws -> (
        index: Int, descriptor: Int32
    ) {
        let start = ContinuousClock.now
        let deadline = start + .seconds(4 * 3600)
        while true {
            for (index, path) in paths.enumerated() {
                let fd = open(path, O_CREAT | O_RDWR | O_CLOEXEC, 0o644)
                guard fd >= 0 else { throw posixFailure("open", URL(fileURLWithPath: path)) }
                if flock(fd, operation | LOCK_NB) == 0 { return (index, fd) }
                close(fd)
            }
            guard ContinuousClock.now < deadline else {
                throw NimbusError(.timeout, "another test held \(paths.joined(separator: ", ")) for four hours")
            }
            // flock has no queue: whoever tries first after a release wins. A waiter that has waited a
            // minute tries ten times as often, so the oldest waiters go first.
            try await Task.sleep(for: .milliseconds(ContinuousClock.now - start < .seconds(60) ? 100 : 10))
        }
    }
}
