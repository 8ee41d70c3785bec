import Foundation

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// An exclusive `flock` on a file, held until `unlock()` or until the process dies (the kernel drops it
/// then, so a killed `nimbus` never leaves a stale lock behind).
///
/// Waiting never blocks a thread: it polls with a non-blocking `flock` and an async sleep. The holder may
/// remove the lock file (`removeFile()`, when what it guards is deleted): a waiter that then wins the lock on
/// the unlinked file notices that the path no longer names its file and takes the lock anew.
public final class FileLock: Sendable {
    private let descriptor: Int32
    /// The lock file.
    public let url: URL

    private init(descriptor: Int32, url: URL) {
        self.descriptor = descriptor
        self.url = url
    }

    /// Takes the lock on `url` (created if missing), waiting up to `timeout`.
    public static func acquire(
        _ url: URL, timeout: Duration = .seconds(600), what: String
    ) async throws(NimbusError) -> FileLock {
        let deadline = ContinuousClock.now + timeout
        while true {
            let fd = open(url.path, O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
            guard fd >= 0 else { throw posixFailure("open the lock", url) }
            if let lock = try await waitForLock(fd, url: url, deadline: deadline, what: what) { return lock }
        }
    }

    /// Waits for the lock on an open `fd`; nil when the file was removed meanwhile (try again).
    private static func waitForLock(
        _ fd: Int32, url: URL, deadline: ContinuousClock.Instant, what: String
    ) async throws(NimbusError) -> FileLock? {
        while flock(fd, LOCK_EX | LOCK_NB) != 0 {
            guard errno == EWOULDBLOCK || errno == EINTR else {
                let error = posixFailure("lock", url)
                close(fd)
                throw error
            }
            guard ContinuousClock.now < deadline else {
                close(fd)
                throw NimbusError(.timeout, "\(what) is busy: another nimbus process holds \(url.path)")
            }
            do {
                try await Task.sleep(for: .milliseconds(50))
            } catch {
                close(fd)
                throw NimbusError(.timeout, "gave up waiting for \(what)", cause: error)
            }
        }
        guard isCurrent(fd, url) else {
            close(fd)
            return nil
        }
        return FileLock(descriptor: fd, url: url)
    }

    /// True when `url` still names the file open as `fd`.
    private static func isCurrent(_ fd: Int32, _ url: URL) -> Bool {
        var open = stat()
        var named = stat()
        return fstat(fd, &open) == 0 && stat(url.path, &named) == 0 && open.st_ino == named.st_ino
            && open.st_dev == named.st_dev
    }

    /// Takes the lock only if it is free now; nil when another process holds it.
    public static func attempt(_ url: URL) throws(NimbusError) -> FileLock? {
        let fd = open(url.path, O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw posixFailure("open the lock", url) }
        guard flock(fd, LOCK_EX | LOCK_NB) == 0, isCurrent(fd, url) else {
            close(fd)
            return nil
        }
        return FileLock(descriptor: fd, url: url)
    }

    /// Removes the lock file while holding it, for when what it guards is gone.
    public func removeFile() {
        unlink(url.path)
    }

    /// Releases the lock. Call it once.
    public func unlock() {
        flock(descriptor, LOCK_UN)
        close(descriptor)
    }

    /// Runs `body` with the lock held.
    public static func withLock<T: Sendable>(
        _ url: URL, what: String, timeout: Duration = .seconds(600), _ body: () async throws -> T
    ) async throws -> T {
        let lock = try await acquire(url, timeout: timeout, what: what)
        defer { lock.unlock() }
        return try await body()
    }
}
