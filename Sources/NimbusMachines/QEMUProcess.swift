import Foundation
import NimbusCore

#if canImport(Glibc)
    import Glibc
#endif

/// The live QEMU of a machine folder, found through its pidfile and checked against /proc, never trusted
/// from the file alone: a stale pidfile or a pid reused by another program reads as "not running".
struct QEMUProcess: Sendable, Hashable {
    let pid: Int32

    /// The running QEMU whose pidfile is in `directory`, or nil.
    static func find(in directory: MachineDirectory) -> QEMUProcess? {
        guard let text = try? String(contentsOf: directory.pidFile, encoding: .utf8),
            let pid = Int32(text.trimmingCharacters(in: .whitespacesAndNewlines)), pid > 0
        else { return nil }
        let process = QEMUProcess(pid: pid)
        guard process.isAlive, process.commandLine.contains(directory.pidFile.path) else { return nil }
        return process
    }

    /// The arguments of the process, from /proc (empty when it is gone).
    var commandLine: [String] {
        guard let data = FileManager.default.contents(atPath: "/proc/\(pid)/cmdline") else { return [] }
        return data.split(separator: 0).map { String(decoding: $0, as: UTF8.self) }
    }

    /// True while the process exists and is not a zombie. QEMU daemonizes, so its parent is init (or the
    /// container's pid 1, which may never reap it): a zombie has closed every file, so it counts as gone.
    var isAlive: Bool {
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
            let close = stat.lastIndex(of: ")")
        else { return false }
        let state = stat[stat.index(after: close)...].trimmingCharacters(in: .whitespaces).first
        return state != "Z" && state != "X"
    }

    /// Resident memory, from /proc/PID/status (VmRSS).
    var residentBytes: UInt64? {
        guard let status = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8) else { return nil }
        for line in status.split(separator: "\n") where line.hasPrefix("VmRSS:") {
            let digits = line.split(separator: " ").dropFirst().first.flatMap { UInt64($0) }
            return digits.map { $0 * 1024 }
        }
        return nil
    }

    func signal(_ signal: Int32) {
        Glibc.kill(pid, signal)
    }

    /// Waits until the process is gone, up to `timeout`; true when it went.
    func waitForExit(timeout: Duration) async -> Bool {
        let deadline = ContinuousClock.now + timeout
        while isAlive {
            guard ContinuousClock.now < deadline else { return false }
            try? await Task.sleep(for: .milliseconds(20))
        }
        return true
    }
}
