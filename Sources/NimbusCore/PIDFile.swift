import Foundation

#if canImport(Glibc)
    import Glibc
#endif

/// A daemon's pidfile, read and checked against /proc, never trusted from the file alone: a daemon that was
/// killed leaves its pidfile behind, and its pid may since be a zombie or another program.
public struct PIDFile: Sendable {
    public let path: String

    public init(_ path: String) { self.path = path }

    /// The pid the file names when that process is alive, or nil.
    public var livePID: Int32? {
        guard let text = try? String(contentsOfFile: path, encoding: .utf8),
            let pid = Int32(text.trimmingCharacters(in: .whitespacesAndNewlines)), pid > 0,
            Self.isAlive(pid)
        else { return nil }
        return pid
    }

    /// True while the process exists and is not a zombie. Daemons have init (or a container's pid 1, which
    /// may never reap them) as their parent: a zombie has closed every file, so it counts as gone.
    ///
    /// /proc/PID/stat tells the state of the process's first thread only, which shows as a zombie as soon as
    /// that thread has ended: a multi-threaded process killed with SIGKILL (QEMU) can still have threads
    /// exiting, and the files they share open (a disk image and its lock), so it is gone only once no other
    /// thread is listed.
    public static func isAlive(_ pid: Int32) -> Bool {
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
            let close = stat.lastIndex(of: ")")
        else { return false }
        let state = stat[stat.index(after: close)...].trimmingCharacters(in: .whitespaces).first
        if state != "Z" && state != "X" { return true }
        let threads = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/task")) ?? []
        return threads.contains { $0 != "\(pid)" }
    }
}
