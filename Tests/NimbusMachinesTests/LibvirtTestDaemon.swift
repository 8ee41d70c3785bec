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
}
