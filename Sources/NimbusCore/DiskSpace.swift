import Foundation

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// Room on the filesystem that holds a path, and the error that names it: what was being written, how much
/// it needed when that is known, how much is free, and the way out.
public enum DiskSpace {
    /// Bytes an unprivileged writer can still use on the filesystem of `url` (or of its nearest existing
    /// parent), from statvfs; nil when it cannot be read.
    public static func available(at url: URL) -> UInt64? {
        var path = url.standardizedFileURL
        while !FileManager.default.fileExists(atPath: path.path), path.path != "/" {
            path = path.deletingLastPathComponent()
        }
        var status = statvfs()
        guard statvfs(path.path, &status) == 0 else { return nil }
        return UInt64(status.f_bavail) * UInt64(status.f_frsize)
    }

    /// Fails, before anything is written, when the filesystem of `url` has less than `bytes` available.
    public static func require(_ bytes: UInt64, at url: URL, for what: String) throws(NimbusError) {
        guard let free = available(at: url), free < bytes else { return }
        throw NimbusError(
            .io,
            "not enough space for \(what) in \(url.deletingLastPathComponent().path): it needs \(ByteSize(bytes: bytes).humanReadable), \(ByteSize(bytes: free).humanReadable) are free: \(remedy); nothing was written"
        )
    }

    /// True when a program's failure (`ProgramRunner`'s error, its stderr in the cause) says the filesystem
    /// or quota is full: qemu-img and tar report ENOSPC as text.
    public static func isFull(_ error: NimbusError) -> Bool {
        let text = error.message + (error.cause.map { " \($0)" } ?? "")
        return text.contains("No space left on device") || text.contains("Disk quota exceeded")
    }

    /// True for the errnos of a full filesystem or quota.
    public static func isFull(_ code: Int32) -> Bool { code == ENOSPC || code == EDQUOT }

    /// The error for a write to `url` that found its filesystem full (`needed` bytes, when known).
    public static func full(_ url: URL, action: String, needed: UInt64? = nil) -> NimbusError {
        let free = available(at: url).map { ByteSize(bytes: $0).humanReadable } ?? "an unknown amount"
        let need = needed.map { " (\(ByteSize(bytes: $0).humanReadable) needed)" } ?? ""
        let kept =
            FileManager.default.fileExists(atPath: url.path) ? "the file as it was is kept" : "nothing was written"
        return NimbusError(
            .io, "could not \(action) \(url.path)\(need): its filesystem is full (\(free) free): \(remedy); \(kept)")
    }

    static let remedy =
        "free some space there, or point NIMBUS_HOME (or XDG_DATA_HOME and XDG_CACHE_HOME) at a larger filesystem"
}
