import Foundation
import NimbusCore
import NimbusMachines

#if canImport(Glibc)
    import Glibc
#endif

/// The live QEMU of a machine folder, found through its pidfile and checked against /proc, never trusted
/// from the file alone: a stale pidfile or a pid reused by another program reads as "not running". Its
/// /proc reading, signals and waiting serve the driver's other daemons too (a network's dnsmasq).
struct QEMUProcess: Sendable, Hashable {
    let pid: Int32

    /// The running QEMU whose pidfile is in `directory`, or nil.
    static func find(in directory: MachineDirectory) -> QEMUProcess? {
        guard let pid = PIDFile(directory.pidFile.path).livePID else { return nil }
        let process = QEMUProcess(pid: pid)
        guard process.commandLine.contains(directory.pidFile.path) else { return nil }
        return process
    }

    /// The arguments of the process, from /proc (empty when it is gone).
    var commandLine: [String] {
        guard let data = FileManager.default.contents(atPath: "/proc/\(pid)/cmdline") else { return [] }
        return data.split(separator: 0).map { String(decoding: $0, as: UTF8.self) }
    }

    /// True while the process exists and is not a zombie (see `PIDFile.isAlive`).
    var isAlive: Bool { PIDFile.isAlive(pid) }

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
