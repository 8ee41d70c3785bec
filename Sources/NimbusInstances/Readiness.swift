import Foundation
import NimbusCore

#if canImport(Glibc)
    import Glibc
#endif

/// The phases a launch or start goes through, reported with their elapsed time on stderr.
public enum BootPhase: String, Sendable, CaseIterable {
    case qemuStarted = "QEMU started"
    case kernel = "kernel booting"
    case sshReachable = "SSH reachable"
    case cloudInitFinished = "cloud-init finished"
}

/// What `cloud-init status --format json` said at the end of the boot.
public struct CloudInitResult: Sendable, Equatable, Decodable {
    /// `done`, `error`, `running`, `disabled`, `not run`.
    public let status: String
    /// cloud-init's own messages for each module that failed.
    public let errors: [String]
    public let detail: String?

    public init(status: String, errors: [String] = [], detail: String? = nil) {
        self.status = status
        self.errors = errors
        self.detail = detail
    }
}

/// Waits for a guest to become ready without polling SSH in a loop: the serial log shows the kernel, a
/// TCP probe on the forwarded port shows sshd's banner, and then one SSH call, `cloud-init status --wait`,
/// returns when cloud-init has finished.
public struct Readiness: Sendable {
    public let serialLog: URL
    public let ssh: SSHAccess
    /// Called as each phase is reached, with the time since `start`.
    public let report: @Sendable (BootPhase, Duration) -> Void
    public let start: ContinuousClock.Instant

    public init(
        serialLog: URL, ssh: SSHAccess, start: ContinuousClock.Instant = .now,
        report: @escaping @Sendable (BootPhase, Duration) -> Void
    ) {
        self.serialLog = serialLog
        self.ssh = ssh
        self.start = start
        self.report = report
    }

    /// Waits through every phase; `timeout` bounds the whole wait. A phase that does not come in time is an
    /// error naming it, with the last lines of the serial log. `isAlive` is asked while waiting, so a QEMU
    /// that dies ends the wait at once.
    public func wait(timeout: Duration, isAlive: @Sendable () async -> Bool) async throws(NimbusError)
        -> CloudInitResult
    {
        let deadline = start + timeout
        // A guest on a remote libvirt host writes its serial log there: its first sign here is SSH.
        if ssh.host == "127.0.0.1" {
            try await until(.kernel, deadline: deadline, isAlive: isAlive) { serialLogContains("Linux version") }
        }
        try await until(.sshReachable, deadline: deadline, isAlive: isAlive) { sshBannerAnswers() }
        let output = try await cloudInitStatus(deadline: deadline)
        report(.cloudInitFinished, .now - start)
        return output
    }

    /// Polls `condition` (a local file read or a loopback probe, never an SSH login) every 200 ms.
    func until(
        _ phase: BootPhase, deadline: ContinuousClock.Instant, isAlive: @Sendable () async -> Bool,
        _ condition: () -> Bool
    ) async throws(NimbusError) {
        while !condition() {
            guard await isAlive() else {
                throw NimbusError(
                    .processFailed, "QEMU ended while waiting for \(phase.rawValue)\(serialTail())")
            }
            // Both failures below end the guest's output, so the log's tail holds them: one read for both.
            let tail = serialLogTail()
            // A guest whose C library refuses the CPU never comes: glibc 2.33+ stops every program built for
            // a higher x86-64 level (init first, so the kernel panics next). Say which level and the fix.
            if let level = Self.missingISALevel(in: tail) {
                throw NimbusError(
                    .unsupported,
                    "the guest's programs need \(level), which the instance's CPU model does not offer: launch it with --cpu-model max (or set cpuModel: max in its instance.yaml and `nimbus start` it)\(serialTail())"
                )
            }
            // A guest whose kernel panicked never comes; say so now rather than at the timeout.
            if tail.contains("Kernel panic - not syncing") {
                throw NimbusError(
                    .processFailed,
                    "the guest's kernel panicked while waiting for \(phase.rawValue) (on a TCG host too loaded to run its vCPUs, a timer check can fail this way: `nimbus start` again once the host is quieter)\(serialTail(lines: 40))"
                )
            }
            guard ContinuousClock.now < deadline else { throw timedOut(phase) }
            try? await Task.sleep(for: .milliseconds(200))
        }
        report(phase, .now - start)
    }

    /// One SSH call that blocks in the guest until cloud-init is done, retried only while the login itself
    /// fails (sshd can answer a moment before cloud-init has written the user's keys).
    func cloudInitStatus(deadline: ContinuousClock.Instant) async throws(NimbusError) -> CloudInitResult {
        var last = ""
        while ContinuousClock.now < deadline {
            let output = try await ssh.run(["cloud-init", "status", "--wait", "--format", "json"])
            // 0: done, 1: error (still a finished boot); 255: ssh itself failed.
            if output.status == 0 || output.status == 1,
                let result = try? JSONDecoder().decode(CloudInitResult.self, from: Data(output.standardOutput.utf8))
            {
                return result
            }
            last = output.standardError.trimmingCharacters(in: .whitespacesAndNewlines)
            try? await Task.sleep(for: .seconds(1))
        }
        throw NimbusError(
            .timeout,
            "timed out waiting for cloud-init to finish (last ssh error: \(last.isEmpty ? "none" : last))\(serialTail())"
        )
    }

    func timedOut(_ phase: BootPhase) -> NimbusError {
        NimbusError(.timeout, "timed out waiting for \(phase.rawValue)\(serialTail())")
    }

    /// The last lines of the serial log, for error messages.
    public func serialTail(lines: Int = 15) -> String {
        guard let data = try? Data(contentsOf: serialLog), !data.isEmpty else {
            return "; the serial log \(serialLog.path) is empty"
        }
        let text = String(decoding: data.suffix(64 * 1024), as: UTF8.self)
        let tail = text.split(separator: "\n", omittingEmptySubsequences: true).suffix(lines)
            .map { "  " + $0.trimmingCharacters(in: .controlCharacters) }
        return "; last lines of \(serialLog.path):\n" + tail.joined(separator: "\n")
    }

    /// The x86-64 level (`x86-64-v3`) glibc's "CPU does not support x86-64-vN" names in `log`, if it does.
    static func missingISALevel(in log: String) -> String? {
        guard let line = log.range(of: "CPU does not support x86-64-v") else { return nil }
        let level = log[line.upperBound...].prefix { $0.isNumber }
        return level.isEmpty ? nil : "x86-64-v\(level)"
    }

    /// The last 64 KiB of the serial log as text (the whole log can be large after a long boot).
    func serialLogTail() -> String {
        guard let handle = try? FileHandle(forReadingFrom: serialLog) else { return "" }
        defer { try? handle.close() }
        let size = (try? handle.seekToEnd()) ?? 0
        try? handle.seek(toOffset: size > 65_536 ? size - 65_536 : 0)
        return String(decoding: (try? handle.readToEnd()) ?? Data(), as: UTF8.self)
    }

    func serialLogContains(_ needle: String) -> Bool {
        guard let data = try? Data(contentsOf: serialLog) else { return false }
        return data.range(of: Data(needle.utf8)) != nil
    }

    /// True when something on the forwarded port sends an SSH banner. QEMU's user-mode network accepts
    /// every connection on a forwarded port at once, so an accepted connection alone proves nothing. The
    /// receive waits at most a second on a loopback socket, where the banner or a reset comes at once.
    func sshBannerAnswers() -> Bool {
        let socket = ssh.host == "127.0.0.1" ? Loopback.connectSocket(port: ssh.port) : Self.connect(ssh.host, ssh.port)
        guard let fd = socket else { return false }
        defer { close(fd) }
        var timeout = timeval(tv_sec: 1, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        var buffer = [UInt8](repeating: 0, count: 64)
        let count = recv(fd, &buffer, buffer.count, 0)
        return count >= 4 && buffer.starts(with: Array("SSH-".utf8))
    }

    /// A TCP socket connected to `host`:`port` (a remote libvirt host), or nil; connecting waits at most 2 s
    /// (on Linux, SO_SNDTIMEO bounds connect). The caller closes it.
    static func connect(_ host: String, _ port: UInt16) -> Int32? {
        var hints = addrinfo()
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var list: UnsafeMutablePointer<addrinfo>?
        guard getaddrinfo(host, String(port), &hints, &list) == 0, let list else { return nil }
        defer { freeaddrinfo(list) }
        var entry: UnsafeMutablePointer<addrinfo>? = list
        while let current = entry {
            let fd = socket(current.pointee.ai_family, current.pointee.ai_socktype, current.pointee.ai_protocol)
            if fd >= 0 {
                var timeout = timeval(tv_sec: 2, tv_usec: 0)
                setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
                if Glibc.connect(fd, current.pointee.ai_addr, current.pointee.ai_addrlen) == 0 { return fd }
                close(fd)
            }
            entry = current.pointee.ai_next
        }
        return nil
    }
}
