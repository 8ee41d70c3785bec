import Foundation
import NimbusCore
import NimbusMachines

/// What the user asked for when launching an instance, stored as `instance.yaml`.
///
/// Missing keys decode to their defaults, so a spec written by an older Nimbus still loads.
public struct InstanceSpec: Codable, Sendable, Equatable {
    /// The format of this file.
    public var version: Int = 1
    /// The instance's name: its folder's, and the guest's hostname unless `hostname` is set.
    public var name: InstanceName
    /// The image reference as the user wrote it (`ubuntu:24.04`, `file:///…`).
    public var image: String
    /// The number of virtual CPUs.
    public var cpus: Int = 2
    /// The guest's memory.
    public var memory: ByteSize = .gibibytes(2)
    /// The disk's virtual size; launch refuses one smaller than the image's.
    public var disk: ByteSize = .gibibytes(10)
    /// The guest's hostname; the instance name when nil.
    public var hostname: String?
    /// The guest's system locale (`en_US.UTF-8`); the image's own when nil.
    public var locale: String?
    /// The guest's time zone from the tz database (`Europe/Paris`); the image's own when nil.
    public var timezone: String?
    /// Public keys (OpenSSH lines) authorised for the default user, beside the installation's own key.
    public var sshAuthorizedKeys: [String] = []
    /// The user's own user-data, verbatim.
    public var userData: String?
    /// How `userData` holds its bytes: as text, or base64 for binary user-data (gzip), which must reach the
    /// guest byte for byte.
    public var userDataEncoding: UserDataEncoding = .text
    /// Host folders shared into the guest.
    public var mounts: [Mount] = []
    /// How `mounts` reach the guest; `auto`, which launch replaces with virtiofs (or 9p where virtiofsd
    /// cannot run), so every start mounts the same way. A stored spec without it mounted 9p.
    public var mountType: MountType = .auto
    /// Extra host ports forwarded to the guest.
    public var forwards: [MachineConfig.PortForward] = []
    /// The scratch disk that comes back empty at every start.
    public var ephemeral: EphemeralDisk?
    /// The accelerator asked for (`--accel`): `kvm`, `tcg`, or `auto` for KVM where it can run the
    /// guest, else TCG.
    public var accelerator: AcceleratorChoice = .auto
    /// `auto` is replaced at launch with `uefi` or `bios` (see `InstanceManager.resolveFirmware`), so every
    /// start boots the same way.
    public var firmware: FirmwareChoice = .auto
    /// QEMU's `-cpu` value (`--cpu-model`); nil for the accelerator's default.
    public var cpuModel: String?
    /// The driver, with its daemon (`--connect`, nil for the driver's default) and pool (`--pool`, nil for
    /// the driver's own), stored as the three keys `driver`, `connect` and `pool`.
    public var driver: DriverChoice = .qemu
    /// A kernel booted by QEMU itself instead of the disk's bootloader (`--kernel`, `--initrd`, `--cmdline`).
    public var kernel: MachineConfig.DirectKernelBoot?
    /// The absolute path of the fleet file (`nimbus apply -f`) this instance was launched from, if any.
    public var fleet: String?
    /// How the NoCloud seed reaches the guest: a CD-ROM, or HTTP from Nimbus (`--seed-over-http`).
    public var seedTransport: SeedTransport = .iso
    /// The user's own Ignition config as given (`--ignition`), for CoreOS images: merged by Ignition into
    /// the config Nimbus writes.
    public var ignition: String?
    /// NICs on host networks (`--network`), with the address and MAC each got at launch.
    public var networks: [NetworkAttachment] = []
    /// Data volumes mounted in the guest (`--volume`), which outlive the instance's root disk.
    public var volumes: [VolumeAttachment] = []

    /// A spec with the built-in defaults (2 CPUs, 2 GiB of memory, a 10 GiB disk); the other
    /// initializer takes config.yaml's.
    public init(name: InstanceName, image: String) {
        self.name = name
        self.image = image
    }

    /// A spec with config.yaml's defaults for everything it sets (image, CPUs, memory, disk, accelerator,
    /// firmware, CPU model, driver): the one place they are merged, for `launch` and `apply` alike, which
    /// then apply their own flags or fleet entries over it.
    public init(name: InstanceName, image: String?, defaults config: NimbusConfig) {
        self.init(name: name, image: image ?? config.image)
        cpus = config.cpus
        memory = config.memory
        disk = config.disk
        accelerator = config.accelerator
        firmware = config.firmware
        cpuModel = config.cpuModel
        driver = config.driver == .qemu ? .qemu : .libvirt(connect: nil, pool: nil)
    }

    /// The hostname the guest gets.
    public var effectiveHostname: String { hostname ?? name.rawValue }

    /// The encodings of `userData`.
    public enum UserDataEncoding: String, Codable, Sendable {
        case text, base64
    }

    /// Stores the user's user-data: as text when it is UTF-8, else as base64, so no byte is changed.
    public mutating func setUserData(_ bytes: [UInt8]) {
        if let text = String(validating: bytes, as: UTF8.self) {
            userData = text
            userDataEncoding = .text
        } else {
            userData = Data(bytes).base64EncodedString()
            userDataEncoding = .base64
        }
    }

    /// The user's user-data exactly as given.
    public var userDataBytes: [UInt8]? {
        guard let userData else { return nil }
        switch userDataEncoding {
        case .text: return Array(userData.utf8)
        case .base64: return Data(base64Encoded: userData).map { Array($0) }
        }
    }

    enum CodingKeys: String, CodingKey {
        case version, name, image, cpus, memory, disk, hostname, locale, timezone, userData, userDataEncoding, mounts,
            forwards,
            ephemeral, accelerator, firmware, cpuModel, driver, connect, pool, fleet, seedTransport, kernel, mountType,
            ignition, networks, volumes
        case sshAuthorizedKeys = "sshAuthorizedKeys"
    }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        name = try c.decode(InstanceName.self, forKey: .name)
        image = try c.decode(String.self, forKey: .image)
        version = try c.decodeIfPresent(Int.self, forKey: .version) ?? 1
        cpus = try c.decodeIfPresent(Int.self, forKey: .cpus) ?? 2
        memory = try c.decodeIfPresent(ByteSize.self, forKey: .memory) ?? .gibibytes(2)
        disk = try c.decodeIfPresent(ByteSize.self, forKey: .disk) ?? .gibibytes(10)
        hostname = try c.decodeIfPresent(String.self, forKey: .hostname)
        locale = try c.decodeIfPresent(String.self, forKey: .locale)
        timezone = try c.decodeIfPresent(String.self, forKey: .timezone)
        sshAuthorizedKeys = try c.decodeIfPresent([String].self, forKey: .sshAuthorizedKeys) ?? []
        userData = try c.decodeIfPresent(String.self, forKey: .userData)
        userDataEncoding = try c.decodeIfPresent(UserDataEncoding.self, forKey: .userDataEncoding) ?? .text
        mounts = try c.decodeIfPresent([Mount].self, forKey: .mounts) ?? []
        // Instances launched before virtiofs mounted their folders over 9p, and their guests' fstab says so.
        mountType = try c.decodeIfPresent(MountType.self, forKey: .mountType) ?? .ninep
        forwards = try c.decodeIfPresent([MachineConfig.PortForward].self, forKey: .forwards) ?? []
        ephemeral = try c.decodeIfPresent(EphemeralDisk.self, forKey: .ephemeral)
        accelerator = try c.decodeIfPresent(AcceleratorChoice.self, forKey: .accelerator) ?? .auto
        // Instances launched before `auto` existed were UEFI.
        firmware = try c.decodeIfPresent(FirmwareChoice.self, forKey: .firmware) ?? .uefi
        cpuModel = try c.decodeIfPresent(String.self, forKey: .cpuModel)
        driver = try DriverChoice(
            name: c.decodeIfPresent(String.self, forKey: .driver) ?? "qemu",
            connect: c.decodeIfPresent(String.self, forKey: .connect),
            pool: c.decodeIfPresent(String.self, forKey: .pool))
        kernel = try c.decodeIfPresent(MachineConfig.DirectKernelBoot.self, forKey: .kernel)
        fleet = try c.decodeIfPresent(String.self, forKey: .fleet)
        seedTransport = try c.decodeIfPresent(SeedTransport.self, forKey: .seedTransport) ?? .iso
        ignition = try c.decodeIfPresent(String.self, forKey: .ignition)
        networks = try c.decodeIfPresent([NetworkAttachment].self, forKey: .networks) ?? []
        volumes = try c.decodeIfPresent([VolumeAttachment].self, forKey: .volumes) ?? []
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(version, forKey: .version)
        try c.encode(name, forKey: .name)
        try c.encode(image, forKey: .image)
        try c.encode(cpus, forKey: .cpus)
        try c.encode(memory, forKey: .memory)
        try c.encode(disk, forKey: .disk)
        try c.encodeIfPresent(hostname, forKey: .hostname)
        try c.encodeIfPresent(locale, forKey: .locale)
        try c.encodeIfPresent(timezone, forKey: .timezone)
        try c.encode(sshAuthorizedKeys, forKey: .sshAuthorizedKeys)
        try c.encodeIfPresent(userData, forKey: .userData)
        try c.encode(userDataEncoding, forKey: .userDataEncoding)
        try c.encode(mounts, forKey: .mounts)
        try c.encode(mountType, forKey: .mountType)
        try c.encode(forwards, forKey: .forwards)
        try c.encodeIfPresent(ephemeral, forKey: .ephemeral)
        try c.encode(accelerator, forKey: .accelerator)
        try c.encode(firmware, forKey: .firmware)
        try c.encodeIfPresent(cpuModel, forKey: .cpuModel)
        try c.encode(driver.name, forKey: .driver)
        try c.encodeIfPresent(kernel, forKey: .kernel)
        try c.encodeIfPresent(driver.connect, forKey: .connect)
        try c.encodeIfPresent(driver.pool, forKey: .pool)
        try c.encodeIfPresent(fleet, forKey: .fleet)
        try c.encode(seedTransport, forKey: .seedTransport)
        try c.encodeIfPresent(ignition, forKey: .ignition)
        try c.encode(networks, forKey: .networks)
        if !volumes.isEmpty { try c.encode(volumes, forKey: .volumes) }
    }
}

/// The firmware an instance boots with (`--firmware`, config.yaml's `firmware`).
public enum FirmwareChoice: String, Codable, Sendable, Equatable, CaseIterable {
    /// BIOS where the machine runs under TCG and the image can boot without UEFI, else UEFI; made concrete
    /// at launch.
    case auto
    case uefi
    case bios

    /// The values, for messages: `auto, uefi, bios`.
    public static var names: String { allCases.map(\.rawValue).joined(separator: ", ") }
}

/// How an instance's NoCloud seed reaches the guest.
public enum SeedTransport: String, Codable, Sendable, Equatable, CaseIterable {
    /// `seed.iso`, attached read-only as a CD-ROM.
    case iso
    /// No seed disk: the files in the instance's `seed/` folder, served by Nimbus on 127.0.0.1 (the guest's
    /// 10.0.2.2) while each boot fetches them; the machine is told the URL in its SMBIOS serial number.
    case http
    /// `seed.iso` as an OpenStack config drive v2 (`config-2`), for images whose cloud-init reads that.
    case configDrive = "configdrive"
    /// `seed.iso` as an OVF environment (`OVF-TRANSPORT`), VMware's ISO transport.
    case ovf

    /// The seed is a CD-ROM (`seed.iso`) the guest reads, in whichever format.
    public var isDisk: Bool { self != .http }
}

/// How `--mount` folders reach the guest (`--mount-type`).
public enum MountType: String, Codable, Sendable, Equatable, CaseIterable {
    /// virtiofs where virtiofsd can run, else 9p with a warning; decided at launch.
    case auto
    /// virtio-fs, served by a virtiofsd the instance owns: what current cloud kernels mount.
    case virtiofs
    /// virtio-9p, served by QEMU; many cloud kernels (Debian's `cloud-amd64`) cannot mount it.
    case ninep = "9p"

    /// The file system type the guest mounts (`fstab`'s third field).
    public var guestFileSystem: String { self == .ninep ? "9p" : "virtiofs" }
}

/// `--mount HOST:GUEST`: a host folder shared into the guest.
public struct Mount: Codable, Sendable, Equatable {
    /// The host folder's absolute path.
    public var hostPath: String
    /// The absolute path the folder is mounted at in the guest.
    public var guestPath: String

    /// Parses `HOST:GUEST`; the host folder must exist, both paths are made absolute.
    public init(
        parsing text: String, relativeTo base: URL = URL(fileURLWithPath: FileManager.default.currentDirectoryPath)
    )
        throws(NimbusError)
    {
        let parts = text.split(separator: ":", maxSplits: 1).map(String.init)
        guard parts.count == 2, !parts[0].isEmpty, parts[1].hasPrefix("/") else {
            throw NimbusError(
                .invalidArgument, "--mount \"\(text)\" is not HOST:GUEST with an absolute guest path, like ~/src:/src")
        }
        let host = URL(fileURLWithPath: (parts[0] as NSString).expandingTildeInPath, relativeTo: base)
            .standardizedFileURL
        var isFolder: ObjCBool = false
        guard FileManager.default.fileExists(atPath: host.path, isDirectory: &isFolder), isFolder.boolValue else {
            throw NimbusError(.invalidArgument, "--mount \"\(text)\": \(host.path) is not a folder on this host")
        }
        hostPath = host.path
        guestPath = parts[1]
    }
}

/// `--ephemeral SIZE[:MOUNTPOINT]`: a scratch disk made empty before every start.
public struct EphemeralDisk: Codable, Sendable, Equatable {
    /// The scratch disk's size.
    public var size: ByteSize
    /// Where the guest mounts it; `/mnt` unless given.
    public var mountPoint: String

    /// Parses `SIZE[:MOUNTPOINT]` (`4G:/scratch`); throws when SIZE is not a size or the mount point
    /// is not absolute.
    public init(parsing text: String) throws(NimbusError) {
        let parts = text.split(separator: ":", maxSplits: 1).map(String.init)
        size = try ByteSize(parsing: parts.first ?? "", what: "--ephemeral")
        mountPoint = parts.count > 1 ? parts[1] : "/mnt"
        guard mountPoint.hasPrefix("/") else {
            throw NimbusError(
                .invalidArgument, "--ephemeral \"\(text)\": the mount point must be absolute, like 4G:/scratch")
        }
    }
}
