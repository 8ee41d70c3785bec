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

    /// A port for the SSH forward on the remote host, where this host cannot test which are free: a random one
    /// from a range rarely used by services; a taken one makes QEMU fail and the driver tries another.
    static func randomPort() -> UInt16 { UInt16.random(in: 20000..<60000) }
}
