import Foundation

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// An exclusive `flock` on a file, held until `unlock()` or until the process dies (the kernel drops it
/// then, so a killed `nimbus` never leaves a stale lock behind).
///
/// Waiting never blocks a thread: it polls with a non-blocking `flock` and an async sleep.
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
        let fd = open(url.path, O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw AtomicFile.ioError("open the lock", url) }
        let deadline = ContinuousClock.now + timeout
        while flock(fd, LOCK_EX | LOCK_NB) != 0 {
            guard errno == EWOULDBLOCK || errno == EINTR else {
                let error = AtomicFile.ioError("lock", url)
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
        return FileLock(descriptor: fd, url: url)
    }

    /// Takes the lock only if it is free now; nil when another process holds it.
    public static func attempt(_ url: URL) throws(NimbusError) -> FileLock? {
        let fd = open(url.path, O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw AtomicFile.ioError("open the lock", url) }
        guard flock(fd, LOCK_EX | LOCK_NB) == 0 else {
            close(fd)
            return nil
        }
        return FileLock(descriptor: fd, url: url)
    }

    /// Releases the lock. Idempotent only in the sense that the kernel drops it when the fd closes.
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
