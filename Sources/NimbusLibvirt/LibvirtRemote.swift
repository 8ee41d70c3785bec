import CLibvirt
import Foundation
import NimbusCore
import NimbusMachines

/// What changes when the daemon runs on another host (a URI with a host part): the files QEMU opens must be
/// on that host, the SSH forward must listen where Nimbus can reach it, and the accelerator is that host's.
public enum LibvirtRemote {
    /// Paths and addresses on the daemon's host that replace the machine folder's.
    public struct HostFiles: Sendable, Hashable {
        /// The UEFI variable store (in the pool, so `delete --purge` removes it).
        public var nvram: String?
        /// The serial console log, beside libvirt's own log of the domain.
        public var serialLog: String
        /// The address the SSH forward listens on.
        public var forwardAddress: String

        public init(nvram: String?, serialLog: String, forwardAddress: String) {
            self.nvram = nvram
            self.serialLog = serialLog
            self.forwardAddress = forwardAddress
        }
    }

    /// The host part of `uri` (`host` in `qemu+ssh://user@host/system`); nil for a local URI.
    public static func host(of uri: String) -> String? {
        guard let host = URLComponents(string: uri)?.host, !host.isEmpty else { return nil }
        return host.hasPrefix("[") && host.hasSuffix("]") ? String(host.dropFirst().dropLast()) : host
    }

    /// Refuses what needs this host's files or sockets, which a machine on another host cannot reach.
    public static func check(_ config: MachineConfig, uri: String) throws(NimbusError) {
        let host = host(of: uri) ?? uri
        if !config.shares.isEmpty {
            throw NimbusError(
                .unsupported,
                "--mount shares a folder of this host, which a guest on \(host) cannot reach: launch without --mount (copy files in with scp or `nimbus exec`), or use a local libvirt URI"
            )
        }
        if config.vnc {
            throw NimbusError(
                .unsupported,
                "the VNC display is a socket in the instance folder, which libvirt on \(host) cannot create: launch without --vnc on remote hosts"
            )
        }
        if config.kernel != nil {
            throw NimbusError(
                .unsupported,
                "direct kernel boot reads the kernel from this host, not from \(host): boot from the image's own bootloader on remote hosts"
            )
        }
        if case .noCloudNet = config.seed {
            throw NimbusError(
                .unsupported,
                "the seed over HTTP is served on this host's 127.0.0.1, which a guest on \(host) cannot reach: use the default seed ISO (--seed-transport iso) on remote hosts"
            )
        }
    }

    /// The accelerator on the daemon's host, from its capabilities: KVM when that host offers a `kvm` domain.
    static func accelerator(_ choice: AcceleratorChoice, connection: LibvirtConnection) throws(NimbusError)
        -> AcceleratorDecision
    {
        if choice == .tcg { return AcceleratorDecision(accelerator: .tcg, reason: "requested with --accel tcg") }
        guard let text = libvirt.virConnectGetCapabilities(connection.pointer) else {
            let error = LibvirtError.last("virConnectGetCapabilities")
            throw NimbusError(
                .network, "libvirt at \(connection.uri) did not give its capabilities: \(error.message)", cause: error)
        }
        defer { free(text) }
        if String(cString: text).contains("<domain type='kvm'") {
            return AcceleratorDecision(accelerator: .kvm, reason: "libvirt at \(connection.uri) offers KVM")
        }
        guard choice == .auto else {
            throw NimbusError(
                .unsupported,
                "--accel kvm is not possible on \(connection.uri): its libvirt offers no KVM domain; use --accel tcg or auto"
            )
        }
        return AcceleratorDecision(accelerator: .tcg, reason: "libvirt at \(connection.uri) offers no KVM")
    }

    /// The memory of the daemon's host (`virNodeGetInfo`).
    static func memory(connection: LibvirtConnection) throws(NimbusError) -> ByteSize {
        var info = virNodeInfo()
        guard libvirt.virNodeGetInfo(connection.pointer, &info) == 0 else {
            let error = LibvirtError.last("virNodeGetInfo")
            throw NimbusError(
                .network, "libvirt at \(connection.uri) did not say its host's memory: \(error.message)", cause: error)
        }
        return ByteSize(bytes: UInt64(info.memory) * 1024)
    }

    /// The serial log the daemon on another host keeps for `domain` (the domain XML's `<log file>`).
    static func serialLogPath(domain: String) -> String { "/var/log/libvirt/qemu/\(domain)-serial.log" }

    /// `ssh` arguments that reach the host of a `qemu+ssh` URI as libvirt does (its user, port, `keyfile`,
    /// `no_verify` and `known_hosts`), ending with the destination; nil for another transport.
    static func sshArguments(_ uri: String) -> [String]? {
        guard let parts = URLComponents(string: uri), parts.scheme?.hasSuffix("+ssh") == true,
            let host = host(of: uri)
        else { return nil }
        var arguments = ["-o", "BatchMode=yes"]
        if let port = parts.port { arguments += ["-p", String(port)] }
        let query = Dictionary((parts.queryItems ?? []).map { ($0.name, $0.value ?? "") }) { first, _ in first }
        if let keyfile = query["keyfile"] { arguments += ["-i", keyfile] }
        if query["no_verify"] == "1" { arguments += ["-o", "StrictHostKeyChecking=no"] }
        if let knownHosts = query["known_hosts"] { arguments += ["-o", "UserKnownHostsFile=\(knownHosts)"] }
        arguments.append(parts.user.map { "\($0)@\(host)" } ?? host)
        return arguments
    }

    /// What file `path` on the host of `uri` holds from `offset` on (from its start when it is shorter),
    /// read over SSH, as only a qemu+ssh URI gives a way to that host's files; nil when it does not exist.
    static func readFile(_ path: String, from offset: UInt64, uri: String) async throws(NimbusError)
        -> SerialLog.Chunk?
    {
        let place = host(of: uri) ?? uri
        guard let ssh = sshArguments(uri) else {
            throw NimbusError(
                .unsupported,
                "the serial log is \(path) on \(place), which Nimbus reads over SSH, and \(uri) is not a qemu+ssh URI: read it there, or watch the console with `virsh -c \(uri) console`"
            )
        }
        // One round trip: the offset the bytes start at (0 after a rotation), then the bytes in base64, as a
        // console log need not be UTF-8. Exit 3: no such file.
        let script =
            "f='\(path)'; [ -e \"$f\" ] || exit 3; s=$(stat -c %s \"$f\") || exit 1; o=\(offset); "
            + "[ \"$s\" -lt \"$o\" ] && o=0; echo \"$o\"; tail -c +$((o + 1)) \"$f\" | base64 -w 0"
        let result = try await ProgramRunner.output("ssh", ssh + ["--", script])
        if result.status == 3 { return nil }
        let lines = result.standardOutput.split(separator: "\n", omittingEmptySubsequences: false)
        guard result.status == 0, let start = lines.first.flatMap({ UInt64($0) }),
            let data = Data(base64Encoded: lines.dropFirst().first.map(String.init) ?? "")
        else {
            let reason = result.standardError.trimmingCharacters(in: .whitespacesAndNewlines)
            throw NimbusError(
                .network,
                "cannot read \(path) on \(place) over SSH (status \(result.status)\(reason.isEmpty ? "" : ": \(reason)")): the SSH user of \(uri) must be able to read libvirt's logs there"
            )
        }
        return SerialLog.Chunk(data: data, next: start + UInt64(data.count))
    }

    /// A port for the SSH forward on the remote host, where this host cannot test which are free: a random one
    /// from a range rarely used by services; a taken one makes QEMU fail and the driver tries another.
    static func randomPort() -> UInt16 { UInt16.random(in: 20000..<60000) }
}
