import Foundation
import NimbusCore

/// The host's libvirtd for tests. There is no systemd here or in CI, so the tests start the daemons
/// themselves (as root: `virtlogd -d`, `libvirtd -d`) when libvirtd does not answer, and leave them running.
///
/// Whether it runs is decided by asking it, never by its socket file: a daemon that was killed (a machine
/// restored from a snapshot, a container restarted) leaves its sockets and pidfile behind in /run.
///
/// Tests hold a `Lease` while they use the daemon: shared by every test that only uses it, exclusive for a
/// test that stops or restarts it. Test targets run in parallel in one process, and a libvirtd restarted
/// under another test's booting guest may destroy that guest when it reconnects.
public enum LibvirtDaemon {
    /// A flock on a file beside libvirt's own runtime files, shared or exclusive, released by `release()`.
    public final class Lease: Sendable {
        let descriptor: Int32

        init(exclusive: Bool) async throws {
            descriptor = try await TestLock.acquire(
                anyOf: ["/run/nimbus-tests-libvirtd.lock"], exclusive ? LOCK_EX : LOCK_SH)
        }

        public func release() { close(descriptor) }
    }

    /// Takes a lease (shared unless `exclusive`), then makes sure libvirtd answers.
    public static func lease(exclusive: Bool = false) async throws -> Lease {
        let lease = try await Lease(exclusive: exclusive)
        do {
            try await ensureRunning()
        } catch {
            lease.release()
            throw error
        }
        return lease
    }

    public static let socket = "/run/libvirt/libvirt-sock"

    /// The daemon's configuration: access for the libvirt group through the socket's permissions, as a host
    /// without polkit grants it (libvirtd.conf's own example). Debian's default is polkit, which needs a
    /// D-Bus system bus that neither this machine nor CI runs; there every user but root is refused.
    static let configFile = "/run/nimbus-tests-libvirtd.conf"
    static let config = """
        # Written by Nimbus's tests (LibvirtDaemon): libvirtd for the libvirt group, without polkit.
        unix_sock_group = "libvirt"
        unix_sock_ro_perms = "0777"
        unix_sock_rw_perms = "0770"
        auth_unix_ro = "none"
        auth_unix_rw = "none"

        """

    /// Whether members of the libvirt group may use the daemon (it was started with `config`): tests of an
    /// unprivileged user need it. A daemon started otherwise (polkit, with no D-Bus here) refuses them.
    public static func grantsLibvirtGroup() async -> Bool {
        let result = try? await ProgramRunner.output(
            "runuser", ["-u", "nobody", "-G", "libvirt", "--", "virsh", "-c", "qemu:///system", "version"])
        return result?.status == 0
    }
    static let libvirtd = PIDFile("/run/libvirtd.pid")
    static let virtlogd = PIDFile("/run/virtlogd.pid")

    /// Starts virtlogd and libvirtd unless libvirtd answers; returns once it does (tests take a `lease()`). A cold start probes
    /// QEMU's capabilities first, which takes minutes on a loaded 2-core TCG host, hence the long wait.
    ///
    /// Starting is serialized by an exclusive flock: tests holding shared leases call this at once, and a second
    /// `libvirtd -d` started before the first has written its pidfile exits with "Unable to obtain pidfile".
    public static func ensureRunning() async throws {
        shareKVMDeviceWithGroup()
        if await answers() { return }
        let starting = try await TestLock.acquire(anyOf: ["/run/nimbus-tests-libvirtd-start.lock"], LOCK_EX)
        defer { close(starting) }
        if await answers() { return }
        if virtlogd.livePID == nil { try await ProgramRunner.run("virtlogd", ["-d"]) }
        if libvirtd.livePID == nil {
            try AtomicFile.write(Data(config.utf8), to: URL(fileURLWithPath: configFile))
            try await ProgramRunner.run("libvirtd", ["-d", "-f", configFile])
        }
        let deadline = ContinuousClock.now + .seconds(300)
        while ContinuousClock.now < deadline {
            if await answers() { return }
            try await Task.sleep(for: .milliseconds(250))
        }
        throw NimbusError(.timeout, "libvirtd did not answer on \(socket) within 300 s of `libvirtd -d`")
    }

    /// Does what udev does on a normal host (the rule in Debian's qemu-system-common): /dev/kvm belongs to group
    /// kvm, mode 0660. With no udev (containers, CI) it stays root's alone; libvirtd then probes QEMU as root and
    /// finds KVM, checks /dev/kvm as its qemu user and does not, takes its capabilities cache for stale, and
    /// probes QEMU again at every lookup: 70 to 240 s per domain start on this 2-core host instead of under one.
    /// Local launches choose TCG by Nimbus's own probe whatever libvirt offers, and the remote-host tests ask for
    /// TCG, so no test guest runs on this host's paravirtual KVM because of it.
    public static func shareKVMDeviceWithGroup() {
        var status = stat()
        guard getuid() == 0, let group = getgrnam("kvm"), stat("/dev/kvm", &status) == 0,
            status.st_mode & S_IFMT == S_IFCHR
        else { return }
        let gid = group.pointee.gr_gid
        if status.st_gid != gid { chown("/dev/kvm", status.st_uid, gid) }
        if status.st_mode & 0o060 != 0o060 { chmod("/dev/kvm", (status.st_mode & 0o777) | 0o060) }
    }

    /// Stops libvirtd (SIGTERM to the pid in its pidfile) and waits until it has gone; QEMU processes of
    /// running domains live on, as they do when an administrator restarts the daemon. Only under an
    /// exclusive lease.
    public static func stop() async throws {
        guard let pid = libvirtd.livePID else {
            throw NimbusError(.notFound, "libvirtd is not running (no live pid in \(libvirtd.path))")
        }
        kill(pid, SIGTERM)
        for _ in 0..<120 {
            if !PIDFile.isAlive(pid) && !FileManager.default.fileExists(atPath: socket) { return }
            try await Task.sleep(for: .milliseconds(250))
        }
        throw NimbusError(.timeout, "libvirtd (pid \(pid)) did not stop")
    }

    /// Stops virtlogd (SIGTERM) and starts a new one, as a restart that is not a re-exec (`virtlogd -d` again,
    /// or systemd's restart of the unit) does. Only under an exclusive lease.
    public static func restartVirtlogd() async throws {
        if let pid = virtlogd.livePID {
            kill(pid, SIGTERM)
            for _ in 0..<40 where PIDFile.isAlive(pid) { try await Task.sleep(for: .milliseconds(250)) }
        }
        try await ProgramRunner.run("virtlogd", ["-d"])
    }

    /// `virsh -c qemu:///system arguments`.
    public static func virsh(_ arguments: [String]) async throws -> ProgramOutput {
        try await ProgramRunner.output("virsh", ["-c", "qemu:///system"] + arguments)
    }

    /// The names of all domains, running or defined.
    public static func domains() async throws -> [String] {
        try await virsh(["list", "--all", "--name"]).standardOutput.split(separator: "\n").map(String.init)
    }

    private static func answers() async -> Bool {
        (try? await virsh(["version"]).status) == 0
    }
}
