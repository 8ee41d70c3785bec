import Foundation
import NimbusCore

/// A second libvirt host on this machine, for tests of remote URIs: a network namespace made by the test,
/// joined to this one by a veth pair, in which libvirtd, virtlogd and sshd run in a private mount namespace
/// (tmpfs over /run/libvirt, /var/lib/libvirt, /var/log/libvirt and /var/cache/libvirt, and a private copy of
/// /etc/libvirt), so they never meet the host's own libvirtd. Reached over `qemu+tcp` (no auth, listening on
/// the namespace's address only) and `qemu+ssh` (root, with a key made for the test).
///
/// `with` tears everything down in reverse, even when the body fails: every process in the namespace
/// (QEMU, the daemons, sshd) is killed, which ends the mount namespace and its tmpfs, then the network
/// namespace and the veth pair are deleted. Needs root, `ip`, `unshare`, `nsenter`, `sshd`, `libvirtd`.
public struct RemoteLibvirtHost: Sendable {
    /// The network namespace's name.
    public let namespace: String
    /// The address of the "remote host" (inside the namespace).
    public let address: String
    /// This host's address on the veth pair.
    public let localAddress: String
    /// The folder with the daemons' configuration, pidfiles and the SSH keys.
    public let directory: TemporaryDirectory

    /// libvirtd over TCP, without authentication.
    public var tcpURI: String { "qemu+tcp://\(address)/system" }
    /// libvirtd over SSH as root, with the test's key; the host key is not checked (it is new each run).
    public var sshURI: String {
        "qemu+ssh://root@\(address)/system?keyfile=\(clientKey.path)&no_verify=1&no_tty=1"
    }
    /// An address on the veth subnet where nothing answers.
    public var silentAddress: String { address.split(separator: ".").dropLast().joined(separator: ".") + ".3" }

    public var clientKey: URL { directory.url.appending(path: "client_key") }
    var libvirtdPID: PIDFile { PIDFile(directory.url.appending(path: "libvirtd.pid").path) }

    /// Starts the host, runs `body` with it, and tears it down whatever happens.
    public static func with<T>(_ body: (RemoteLibvirtHost) async throws -> T) async throws -> T {
        let host = try make()
        do {
            try await host.start()
            let result = try await body(host)
            await host.tearDown()
            return result
        } catch {
            await host.tearDown()
            throw error
        }
    }

    static func make() throws -> RemoteLibvirtHost {
        let tag = UUID().uuidString.prefix(6).lowercased()
        // A /24 of its own per run, so a namespace left by a killed run never clashes with this one.
        let subnet = "10.251.\(Int.random(in: 0..<250))"
        return RemoteLibvirtHost(
            namespace: "nimbus-rt-\(tag)", address: "\(subnet).2", localAddress: "\(subnet).1",
            directory: try TemporaryDirectory("nimbus-remote-host"))
    }

    private var hostVeth: String { "nvh\(namespace.suffix(6))" }
    private var namespaceVeth: String { "nvn\(namespace.suffix(6))" }

    func start() async throws {
        let dir = directory.url.path
        LibvirtDaemon.shareKVMDeviceWithGroup()
        try await ProgramRunner.run("ip", ["netns", "add", namespace])
        try await ProgramRunner.run(
            "ip", ["link", "add", hostVeth, "type", "veth", "peer", "name", namespaceVeth, "netns", namespace])
        try await ProgramRunner.run("ip", ["addr", "add", "\(localAddress)/24", "dev", hostVeth])
        try await ProgramRunner.run("ip", ["link", "set", hostVeth, "up"])
        try await ProgramRunner.run("ip", ["-n", namespace, "addr", "add", "\(address)/24", "dev", namespaceVeth])
        try await ProgramRunner.run("ip", ["-n", namespace, "link", "set", namespaceVeth, "up"])
        try await ProgramRunner.run("ip", ["-n", namespace, "link", "set", "lo", "up"])

        // The daemons' own /etc/libvirt: the host's configuration files without its pools, networks and
        // domains, listening on the namespace's address over TCP without authentication.
        let etc = directory.url.appending(path: "etc-libvirt")
        try await ProgramRunner.run("cp", ["-a", "/etc/libvirt/.", etc.path])
        for folder in ["qemu", "storage", "secrets", "nwfilter"] {
            let url = etc.appending(path: folder)
            try? FileManager.default.removeItem(at: url)
            try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
        }
        let conf = etc.appending(path: "libvirtd.conf")
        let settings = "\nlisten_tls = 0\nlisten_tcp = 1\nauth_tcp = \"none\"\nlisten_addr = \"\(address)\"\n"
        let handle = try FileHandle(forWritingTo: conf)
        try handle.seekToEnd()
        try handle.write(contentsOf: Data(settings.utf8))
        try handle.close()
        // The host's QEMU capabilities cache, so the new libvirtd does not probe QEMU for minutes.
        try FileManager.default.createDirectory(
            at: directory.url.appending(path: "cache"), withIntermediateDirectories: true)
        if FileManager.default.fileExists(atPath: "/var/cache/libvirt/qemu") {
            try await ProgramRunner.run("cp", ["-a", "/var/cache/libvirt/qemu", "\(dir)/cache/"])
        }
        try await ProgramRunner.run("ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-f", "\(dir)/host_key"])
        try await ProgramRunner.run("ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-f", clientKey.path])
        try FileManager.default.copyItem(
            at: clientKey.appendingPathExtension("pub"), to: directory.url.appending(path: "authorized_keys"))
        try FileManager.default.createDirectory(atPath: "/run/sshd", withIntermediateDirectories: true)

        let script = """
            for d in /run/libvirt /var/lib/libvirt /var/log/libvirt /var/cache/libvirt; do
              mount -t tmpfs -o mode=0755 tmpfs "$d"
            done
            mkdir -p /var/log/libvirt/qemu
            mount --bind \(dir)/etc-libvirt /etc/libvirt
            cp -a \(dir)/cache/. /var/cache/libvirt/
            virtlogd -d -p \(dir)/virtlogd.pid
            libvirtd --listen -d -p \(dir)/libvirtd.pid -f /etc/libvirt/libvirtd.conf
            /usr/sbin/sshd -h \(dir)/host_key -o PidFile=\(dir)/sshd.pid -o ListenAddress=\(address) \
              -o AuthorizedKeysFile=\(dir)/authorized_keys -o StrictModes=no -o PermitRootLogin=prohibit-password \
              -o PasswordAuthentication=no
            """
        try await ProgramRunner.run(
            "ip", ["netns", "exec", namespace, "unshare", "-m", "--propagation", "private", "sh", "-ec", script])
        let deadline = ContinuousClock.now + .seconds(300)
        while ContinuousClock.now < deadline {
            if (try? await virsh(["version"]).status) == 0 { return }
            try await Task.sleep(for: .milliseconds(250))
        }
        throw NimbusError(.timeout, "the namespace's libvirtd did not answer on \(tcpURI) within 300 s")
    }

    /// `virsh -c qemu+tcp://ADDRESS/system arguments`.
    public func virsh(_ arguments: [String]) async throws -> ProgramOutput {
        try await ProgramRunner.output("virsh", ["-c", tcpURI] + arguments)
    }

    /// The volumes of `pool` on this host, sorted; empty when the pool does not exist.
    public func volumes(in pool: String) async throws -> [String] {
        // Files libvirt made outside the storage API (UEFI variables) show after a refresh.
        _ = try await virsh(["pool-refresh", pool])
        let output = try await virsh(["vol-list", pool])
        guard output.status == 0 else { return [] }
        // Rows after the header and its rule: " name   path".
        return output.standardOutput.split(separator: "\n").dropFirst(2)
            .compactMap { $0.split(separator: " ").first.map(String.init) }.sorted()
    }

    /// Runs `program arguments` inside the host's namespaces (as its libvirtd sees the world).
    public func runInside(_ program: String, _ arguments: [String]) async throws {
        guard let pid = libvirtdPID.livePID else {
            throw NimbusError(.notFound, "the namespace's libvirtd is not running")
        }
        try await ProgramRunner.run("nsenter", ["-t", String(pid), "-m", "-n", "--", program] + arguments)
    }

    /// The processes in the network namespace.
    public func processes() async -> [Int32] {
        let output = try? await ProgramRunner.output("ip", ["netns", "pids", namespace])
        return (output?.standardOutput ?? "").split(separator: "\n").compactMap { Int32($0) }
    }

    /// Kills every process in the namespace (QEMU first: its domains are this test's), which ends the mount
    /// namespace and its tmpfs; deletes the namespace, which takes the veth pair with it.
    func tearDown() async {
        for _ in 0..<40 {
            let pids = await processes()
            if pids.isEmpty { break }
            for pid in pids { kill(pid, SIGKILL) }
            try? await Task.sleep(for: .milliseconds(250))
        }
        _ = try? await ProgramRunner.output("ip", ["netns", "del", namespace])
        _ = try? await ProgramRunner.output("ip", ["link", "del", hostVeth])
        directory.remove()
    }
}
