import Foundation
import NimbusCore
import NimbusMachines

/// One instance's folder and the typed paths of everything in it (DESIGN.md, "On disk").
public struct InstanceDirectory: Sendable, Hashable {
    /// The folder itself: `instances/<name>`.
    public let url: URL

    /// The instance folder at `url`, which need not exist yet.
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
    /// The files the hypervisor keeps here (QMP socket, pidfile, serial log, UEFI variables).
    public var machine: MachineDirectory { MachineDirectory(url) }
    /// The serial console log of the current boot.
    public var serialLog: URL { machine.serialLog }
    /// The guest's SSH host keys, pinned before its first boot.
    public var knownHosts: URL { file("known_hosts") }
    /// The private half of the pinned host key (0600), so a new root disk gets the same key (`upgrade`).
    public var hostKey: URL { file("ssh_host_ed25519_key") }
    /// What the current root disk was made from (`RootRecord`); absent until the first upgrade, when the
    /// state's image fields say it.
    public var rootRecord: URL { file("root.json") }
}
