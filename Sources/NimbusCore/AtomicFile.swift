import Foundation

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// Writes files so that a reader sees the old content or the new, never a mix: temp file in the same
/// folder, fsync, rename, fsync of the folder (so the rename itself survives a crash).
public enum AtomicFile {
    /// Replaces `url` with `data`, creating it with `permissions`.
    public static func write(_ data: Data, to url: URL, permissions: mode_t = 0o644) throws(NimbusError) {
        let folder = url.deletingLastPathComponent()
        let temporary = folder.appending(
            path: ".\(url.lastPathComponent).\(getpid()).\(UInt32.random(in: 0...UInt32.max)).tmp")
        let fd = open(temporary.path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, permissions)
        guard fd >= 0 else {
            if DiskSpace.isFull(errno) { throw DiskSpace.full(url, action: "write", needed: UInt64(data.count)) }
            throw posixFailure("create", temporary)
        }
        var written = 0
        let ok: Bool = data.withUnsafeBytes { buffer in
            while written < buffer.count {
                let n = Glibc.write(fd, buffer.baseAddress! + written, buffer.count - written)
                if n < 0 {
                    if errno == EINTR { continue }
                    return false
                }
                written += n
            }
            return fsync(fd) == 0
        }
        let saved = errno
        close(fd)
        guard ok else {
            unlink(temporary.path)
            if DiskSpace.isFull(saved) { throw DiskSpace.full(url, action: "write", needed: UInt64(data.count)) }
            errno = saved
            throw posixFailure("write", url)
        }
        guard rename(temporary.path, url.path) == 0 else {
            let error = posixFailure("rename into place", url)
            unlink(temporary.path)
            throw error
        }
        syncDirectory(folder)
    }

    /// Flushes a folder's entries (a rename or a new file in it) to disk.
    public static func syncDirectory(_ folder: URL) {
        let fd = open(folder.path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0 else { return }
        fsync(fd)
        close(fd)
    }

}

/// A failed system call on `url` as a NimbusError naming the action, the path and errno's text. Call it
/// right after the failing call, before anything else can change errno.
public func posixFailure(_ action: String, _ url: URL) -> NimbusError {
    NimbusError(.io, "could not \(action) \(url.path): \(String(cString: strerror(errno)))")
}
