import Foundation
import NimbusCore

/// One instance's folder and the typed paths of everything in it (DESIGN.md, "On disk").
public struct InstanceDirectory: Sendable, Hashable {
    /// The folder itself: `instances/<name>`.
    public let url: URL

    public init(url: URL) { self.url = url }

    private func file(_ name: String) -> URL { url.appending(path: name, directoryHint: .notDirectory) }

    /// The spec as launched: what the user asked for.
    public var spec: URL { file("instance.yaml") }
    /// What is: lifecycle facts, written atomically.
    public var state: URL { file("state.json") }
    /// The qcow2 overlay on the cached base image.
    public var disk: URL { file("disk.qcow2") }
    /// The scratch disk that comes back empty at every start.
    public var ephemeralDisk: URL { file("ephemeral.img") }
    /// The cloud-init NoCloud seed.
    public var seed: URL { file("seed.iso") }
    /// The Ignition config, for Fedora CoreOS.
    public var ignition: URL { file("ignition.json") }
    /// The QMP socket.
    public var qmpSocket: URL { file("qmp.sock") }
    /// QEMU's pidfile.
    public var pidFile: URL { file("qemu.pid") }
    /// The serial console log.
    public var serialLog: URL { file("serial.log") }
    /// The per-instance UEFI variable store.
    public var firmwareVariables: URL { file("efivars.fd") }
    /// The guest's SSH host keys, pinned before its first boot.
    public var knownHosts: URL { file("known_hosts") }
    /// The lock every change of this instance is made under.
    public var lock: URL { file("lock") }
}
