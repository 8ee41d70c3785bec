import Foundation
import NimbusCore

/// What is known about an instance between commands, stored as `state.json` (atomically).
///
/// Whether the instance runs is never read from here: it is read from the live QEMU process and QMP. This
/// file keeps what cannot be read back: the ports chosen, the accelerator and why, the base image, the
/// last error.
public struct InstanceState: Codable, Sendable, Equatable {
    /// The format of this file.
    public var version: Int = 1
    /// The content address (sha256) of the base image the overlay is backed by.
    public var imageDigest: String?
    /// A label for the image: release and serial (`debian 12 (20240102)`).
    public var imageDescription: String?
    /// The port forwarded to the guest's SSH.
    public var sshPort: UInt16?
    /// The host that port is on: nil for 127.0.0.1, else the remote libvirt host.
    public var sshHost: String?
    /// The user Nimbus logs in as.
    public var sshUser: String = "nimbus"
    /// The accelerator chosen at the last start, `kvm` or `tcg`.
    public var accelerator: String?
    /// Why that accelerator was chosen.
    public var acceleratorReason: String?
    /// When the instance was launched (when this state was first made).
    public var createdAt: Date = Date()
    /// When the machine last started; nil before the first start. `info` counts uptime from it.
    public var lastStartedAt: Date?
    /// The cloud-init instance-id of the seed.
    public var seedInstanceID: String?
    /// cloud-init's result at the last readiness check: `done`, `error`, `running`.
    public var cloudInitStatus: String?
    /// Set when a launch or start failed; `list` shows the instance as `error`.
    public var lastError: String?
    /// True once the instance is completely built.
    public var complete: Bool = false
    /// True after `delete` without `--purge`: kept until `purge`, back with `recover`.
    public var deleted: Bool = false

    /// A state with nothing recorded yet, created now.
    public init() {}

    /// A state from state.json's JSON (ISO 8601 dates), as `InstanceStore.saveState` writes it.
    public static func decode(_ data: Data) throws -> InstanceState {
        let decoder = JSONDecoder()
        decoder.dateDecodingStrategy = .iso8601
        return try decoder.decode(InstanceState.self, from: data)
    }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        let defaults = InstanceState()
        version = try c.decodeIfPresent(Int.self, forKey: .version) ?? defaults.version
        imageDigest = try c.decodeIfPresent(String.self, forKey: .imageDigest)
        imageDescription = try c.decodeIfPresent(String.self, forKey: .imageDescription)
        sshPort = try c.decodeIfPresent(UInt16.self, forKey: .sshPort)
        sshHost = try c.decodeIfPresent(String.self, forKey: .sshHost)
        sshUser = try c.decodeIfPresent(String.self, forKey: .sshUser) ?? defaults.sshUser
        accelerator = try c.decodeIfPresent(String.self, forKey: .accelerator)
        acceleratorReason = try c.decodeIfPresent(String.self, forKey: .acceleratorReason)
        createdAt = try c.decodeIfPresent(Date.self, forKey: .createdAt) ?? defaults.createdAt
        lastStartedAt = try c.decodeIfPresent(Date.self, forKey: .lastStartedAt)
        seedInstanceID = try c.decodeIfPresent(String.self, forKey: .seedInstanceID)
        cloudInitStatus = try c.decodeIfPresent(String.self, forKey: .cloudInitStatus)
        lastError = try c.decodeIfPresent(String.self, forKey: .lastError)
        complete = try c.decodeIfPresent(Bool.self, forKey: .complete) ?? false
        deleted = try c.decodeIfPresent(Bool.self, forKey: .deleted) ?? false
    }
}
