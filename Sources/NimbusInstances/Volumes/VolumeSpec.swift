import Foundation
import NimbusCore
import NimbusMachines

/// A data volume as the user made it (`nimbus volume create`, or `launch --volume NAME:PATH:SIZE`), stored as
/// `volume.yaml` beside its disk: data that outlives the root disks of the instances it is attached to.
public struct VolumeSpec: Codable, Sendable, Equatable {
    /// The format of this file.
    public var version: Int = 1
    /// 1 to 40 of a-z, 0-9 and '-'.
    public var name: String
    /// The disk's virtual size; the guest's ext4 filesystem grows to it at the next start after a resize.
    public var size: ByteSize
    /// When the volume was made.
    public var createdAt: Date = Date()
    /// The instance the volume is attached to; nil when it is free. One instance at a time.
    public var attachedTo: String?
    /// Where the volume lives since a libvirt instance first used it: a volume in that daemon's pool (made
    /// from the local disk at that instance's first start). Nil while it is the local qcow2, for QEMU.
    public var libvirt: LibvirtPlace?

    /// A volume's place in a libvirt daemon's storage pool.
    public struct LibvirtPlace: Codable, Sendable, Equatable {
        /// The daemon's URI as the instance gave it (`--connect`; nil for the driver's default).
        public var connect: String?
        /// The pool (`--pool`; nil for the driver's own).
        public var pool: String?
        /// The volume's name in the pool, unique to this volume (`nimbus-vol-NAME-TOKEN`).
        public var volume: String

        /// A new place for volume `name` in the pool of `driver`; nil for the QEMU driver, whose volumes are
        /// qcow2 files here. The pool volume's name is unique to this volume (two stores may share a pool).
        init?(for name: String, on driver: DriverChoice) {
            guard case .libvirt(let connect, let pool) = driver else { return nil }
            self.connect = connect
            self.pool = pool
            volume = "nimbus-vol-\(name)-\(String(UUID().uuidString.prefix(6)).lowercased()).qcow2"
        }

        /// Whether an instance of `driver` can use the volume here.
        func serves(_ driver: DriverChoice) -> Bool { driver == .libvirt(connect: connect, pool: pool) }

        /// The driver choice that reaches it.
        var driver: DriverChoice { .libvirt(connect: connect, pool: pool) }

        /// Where it is, for people.
        var description: String {
            "volume \(volume) in libvirt pool \(pool ?? "nimbus") at \(connect ?? "qemu:///system")"
        }
    }

    /// A new, unattached volume.
    public init(name: String, size: ByteSize) {
        self.name = name
        self.size = size
    }

    /// The serial the volume's disk shows the guest (virtio-blk keeps 20 bytes): the guest finds it as
    /// `/dev/disk/by-id/virtio-SERIAL`, whichever other disks the machine has.
    public var serial: String { Self.serial(of: name) }

    /// The serial of the volume named `name`.
    static func serial(of name: String) -> String {
        name.count <= 16 ? "vol-\(name)" : "vol-" + String(format: "%08x", fnv1a32(name))
    }

    /// The ext4 label the guest gives the filesystem on first use (ext4 keeps 16 bytes) and mounts it by.
    public var label: String { name.count <= 13 ? "nv-\(name)" : "nv-" + String(format: "%08x", fnv1a32(name)) }

    /// The guest's path of the volume's disk.
    public var guestDevice: String { "/dev/disk/by-id/virtio-\(serial)" }

    /// Checks a volume name: 1 to 40 of a-z, 0-9 and '-', '-' neither first nor last.
    public static func checkName(_ name: String) throws(NimbusError) {
        let allowed = name.unicodeScalars.allSatisfy {
            ("a"..."z").contains($0) || ("0"..."9").contains($0) || $0 == "-"
        }
        guard !name.isEmpty, name.count <= 40, allowed, name.first != "-", name.last != "-" else {
            throw NimbusError(
                .invalidArgument,
                "volume name \"\(name)\" is not valid: use 1 to 40 of a-z, 0-9 and '-', '-' neither first nor last"
            )
        }
    }

    /// Refuses a size no filesystem is made on (under 16 MiB), naming the option.
    public static func checkSize(_ size: ByteSize, what: String) throws(NimbusError) {
        guard size >= .mebibytes(16) else {
            throw NimbusError(.invalidArgument, "\(what) \(size) is too small for a volume: ask for at least 16M")
        }
    }
}

/// `--volume NAME:PATH[:SIZE]`: a volume mounted at `mountPoint` in the instance, stored in its instance.yaml.
public struct VolumeAttachment: Codable, Sendable, Equatable {
    /// The volume's name.
    public var volume: String
    /// Where the guest mounts it (an absolute path).
    public var mountPoint: String

    /// `volume` mounted at `mountPoint`.
    public init(volume: String, mountPoint: String) {
        self.volume = volume
        self.mountPoint = mountPoint
    }

    /// Parses `NAME:PATH[:SIZE]`; the size, when given, is for making the volume if it does not exist.
    public static func parse(_ text: String, what: String = "--volume") throws(NimbusError) -> (
        attachment: VolumeAttachment, size: ByteSize?
    ) {
        let parts = text.split(separator: ":", omittingEmptySubsequences: false).map(String.init)
        guard parts.count == 2 || parts.count == 3 else {
            throw NimbusError(
                .invalidArgument, "\(what) \"\(text)\" is not NAME:PATH or NAME:PATH:SIZE (like data:/srv:20G)")
        }
        try VolumeSpec.checkName(parts[0])
        let path = parts[1]
        guard path.hasPrefix("/"), path != "/", !path.contains(" "), !path.split(separator: "/").contains("..") else {
            throw NimbusError(
                .invalidArgument,
                "\(what) \"\(text)\": the mount point must be an absolute path other than / (like /srv), without spaces or '..'"
            )
        }
        var size: ByteSize?
        if parts.count == 3 {
            let parsed = try ByteSize(parsing: parts[2], what: what)
            try VolumeSpec.checkSize(parsed, what: what)
            size = parsed
        }
        return (VolumeAttachment(volume: parts[0], mountPoint: path), size)
    }
}
