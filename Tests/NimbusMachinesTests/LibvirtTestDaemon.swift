import Foundation
import NimbusCore
import NimbusTestSupport

/// The host's libvirtd for tests: started here when it is not running (as root: `virtlogd -d` and
/// `libvirtd -d`, as CI does too, there being no systemd), and left running for the next test.
enum LibvirtTestDaemon {
    static let socket = "/run/libvirt/libvirt-sock"

    /// True when libvirtd and virtlogd are installed and the tests may start them (root).
    static var installed: Bool {
        Prerequisites.programs("libvirtd", "virtlogd", "virsh", "qemu-system-x86_64") && getuid() == 0
    }

    /// Starts the daemons if their sockets are missing; returns once libvirtd answers.
    static func ensureRunning() async throws {
        if !FileManager.default.fileExists(atPath: "/run/libvirt/virtlogd-sock") {
            try await ProgramRunner.run("virtlogd", ["-d"])
        }
        if !FileManager.default.fileExists(atPath: socket) {
            try await ProgramRunner.run("libvirtd", ["-d"])
        }
        // libvirtd daemonizes before it listens: wait for it to answer, at most about 30 s.
        for _ in 0..<120 {
            if let result = try? await ProgramRunner.output("virsh", ["-c", "qemu:///system", "version"]),
                result.status == 0
            {
                return
            }
            try await Task.sleep(for: .milliseconds(250))
        }
        throw NimbusError(.timeout, "libvirtd did not answer on \(socket)")
    }

    /// Stops libvirtd (SIGTERM to the pid in its pidfile) and waits until it has gone; QEMU processes of
    /// running domains live on, as they do when an administrator restarts the daemon.
    static func stop() async throws {
        guard let text = try? String(contentsOfFile: "/run/libvirtd.pid", encoding: .utf8),
            let pid = Int32(text.trimmingCharacters(in: .whitespacesAndNewlines)), pid > 0
        else { throw NimbusError(.notFound, "libvirtd is not running (no /run/libvirtd.pid)") }
        kill(pid, SIGTERM)
        for _ in 0..<120 {
            if kill(pid, 0) != 0 && !FileManager.default.fileExists(atPath: socket) { return }
            try await Task.sleep(for: .milliseconds(250))
        }
        throw NimbusError(.timeout, "libvirtd (pid \(pid)) did not stop")
    }
}
