import NimbusCore

/// Everything that decides how a machine is built: the input of `Hypervisor.start`.
///
/// A plain `Codable` value, so NimbusInstances can keep it beside the instance; keys missing from a stored
/// copy decode to their defaults, and `version` says which shape it has.
public struct MachineConfig: Codable, Sendable, Hashable {
    /// The shape of this value; bumped when a field changes meaning.
    public var version: Int = 1
    /// The machine's name (the instance name); QEMU's `-name`, and the source of the stable MAC address.
    public var name: String
    /// Virtual CPUs.
    public var cpus: Int = 2
    /// Guest RAM.
    public var memory: ByteSize = .gibibytes(2)
    /// The disks, boot disk first (the overlay, then extras such as a scratch disk).
    public var disks: [Disk] = []
    /// How the guest gets its personality.
    public var seed: Seed = .none
    /// UEFI (OVMF, default) or BIOS (SeaBIOS).
    public var firmware: Firmware = .uefi()
    /// A kernel to boot directly, bypassing the bootloader on the disk.
    public var kernel: DirectKernelBoot?
    /// `q35` (default) or `microvm` (only with direct kernel boot and BIOS firmware).
    public var machineType: MachineType = .q35
    /// How the guest reaches the network.
    public var network: Network = Network()
    /// A virtio-rng device fed from the host's /dev/urandom, so first boot does not stall on entropy.
    public var randomNumberGenerator: Bool = true
    /// The serial console log.
    public var console: Console = Console()
    /// Host folders shared into the guest.
    public var shares: [Share] = []
    /// A VNC server on a Unix socket (`vnc.sock` in the machine's folder); no display at all otherwise.
    public var vnc: Bool = false
    /// Which accelerator to use.
    public var accelerator: AcceleratorChoice = .auto
    /// The CPU model QEMU gives the guest (`-cpu`, like `max` or `Haswell-v4,-hle`); nil for the accelerator's
    /// default (`Accelerator.defaultCPUModel`).
    public var cpuModel: String?
    /// Arguments appended verbatim after everything Nimbus renders: the escape hatch for QEMU options
    /// Nimbus does not model. Never passed through a shell.
    public var extraArguments: [String] = []
    /// Opaque texts the machine's owner keeps with it, by key (letters and digits). QEMU ignores them; the
    /// libvirt driver stores them in the domain's metadata, so the owner can rebuild what it lost from there.
    public var annotations: [String: String] = [:]

    public init(name: String) {
        self.name = name
    }

    public init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        let defaults = MachineConfig(name: try container.decode(String.self, forKey: .name))
        self = defaults
        version = try container.decodeIfPresent(Int.self, forKey: .version) ?? defaults.version
        cpus = try container.decodeIfPresent(Int.self, forKey: .cpus) ?? defaults.cpus
        memory = try container.decodeIfPresent(ByteSize.self, forKey: .memory) ?? defaults.memory
        disks = try container.decodeIfPresent([Disk].self, forKey: .disks) ?? defaults.disks
        seed = try container.decodeIfPresent(Seed.self, forKey: .seed) ?? defaults.seed
        firmware = try container.decodeIfPresent(Firmware.self, forKey: .firmware) ?? defaults.firmware
        kernel = try container.decodeIfPresent(DirectKernelBoot.self, forKey: .kernel)
        machineType = try container.decodeIfPresent(MachineType.self, forKey: .machineType) ?? defaults.machineType
        network = try container.decodeIfPresent(Network.self, forKey: .network) ?? defaults.network
        randomNumberGenerator =
            try container.decodeIfPresent(Bool.self, forKey: .randomNumberGenerator) ?? defaults.randomNumberGenerator
        console = try container.decodeIfPresent(Console.self, forKey: .console) ?? defaults.console
        shares = try container.decodeIfPresent([Share].self, forKey: .shares) ?? defaults.shares
        vnc = try container.decodeIfPresent(Bool.self, forKey: .vnc) ?? defaults.vnc
        accelerator =
            try container.decodeIfPresent(AcceleratorChoice.self, forKey: .accelerator) ?? defaults.accelerator
        cpuModel = try container.decodeIfPresent(String.self, forKey: .cpuModel)
        extraArguments =
            try container.decodeIfPresent([String].self, forKey: .extraArguments) ?? defaults.extraArguments
        annotations = try container.decodeIfPresent([String: String].self, forKey: .annotations) ?? [:]
    }
}

extension MachineConfig {
    /// A disk image attached to the machine.
    public struct Disk: Codable, Sendable, Hashable {
        /// The image file (an overlay on a cached base image, or a scratch disk).
        public var path: String
        /// The image format.
        public var format: DiskFormat = .qcow2
        /// The guest-side controller.
        public var interface: DiskInterface = .virtioBlk
        /// Attach read-only.
        public var readOnly: Bool = false
        /// The serial the guest sees (virtio-blk keeps 20 bytes: `/dev/disk/by-id/virtio-SERIAL`); nil for none.
        public var serial: String?
        /// Tells this disk from earlier ones at the same path, for a driver that keeps disks in storage of its
        /// own (libvirt's pool): another key is another volume there. Nil for the disk an instance was
        /// launched with; an upgrade's new root disk has a key of its own.
        public var volumeKey: String?
        /// A data disk that outlives machines (a `nimbus volume`): a driver with storage of its own (libvirt's
        /// pool) keeps it there under this name, made once from `path`, then never replaced, and never deleted
        /// with a machine. Nil for a machine's own disks.
        public var dataVolume: String?

        public init(
            path: String, format: DiskFormat = .qcow2, interface: DiskInterface = .virtioBlk, readOnly: Bool = false,
            serial: String? = nil, volumeKey: String? = nil, dataVolume: String? = nil
        ) {
            self.path = path
            self.format = format
            self.interface = interface
            self.readOnly = readOnly
            self.serial = serial
            self.volumeKey = volumeKey
            self.dataVolume = dataVolume
        }

        public init(from decoder: any Decoder) throws {
            let container = try decoder.container(keyedBy: CodingKeys.self)
            path = try container.decode(String.self, forKey: .path)
            format = try container.decodeIfPresent(DiskFormat.self, forKey: .format) ?? .qcow2
            interface = try container.decodeIfPresent(DiskInterface.self, forKey: .interface) ?? .virtioBlk
            readOnly = try container.decodeIfPresent(Bool.self, forKey: .readOnly) ?? false
            serial = try container.decodeIfPresent(String.self, forKey: .serial)
            volumeKey = try container.decodeIfPresent(String.self, forKey: .volumeKey)
            dataVolume = try container.decodeIfPresent(String.self, forKey: .dataVolume)
        }
    }

    /// Image formats QEMU opens here.
    public enum DiskFormat: String, Codable, Sendable, Hashable, CaseIterable {
        case qcow2, raw
    }

    /// The guest-side disk controller.
    public enum DiskInterface: String, Codable, Sendable, Hashable, CaseIterable {
        /// virtio-blk: one PCI function per disk, the fastest path (`/dev/vdX`).
        case virtioBlk = "virtio-blk"
        /// virtio-scsi: one controller for many disks, SCSI UNMAP and hotplug (`/dev/sdX`).
        case virtioSCSI = "virtio-scsi"
    }

    /// Where the guest's first-boot configuration comes from.
    public enum Seed: Codable, Sendable, Hashable {
        /// No seed (the image configures itself, or was configured before).
        case none
        /// A cloud-init NoCloud ISO (volume label `cidata`), attached read-only as a CD-ROM.
        case noCloud(iso: String)
        /// An Ignition config (Fedora CoreOS, Flatcar), passed through QEMU's firmware config device as
        /// `opt/com.coreos/config`, where Ignition's QEMU platform reads it.
        case ignition(config: String)
        /// NoCloud over HTTP: the guest reads `ds=nocloud-net;s=URL` from the SMBIOS serial number and
        /// fetches meta-data, user-data and vendor-data from `URL`, which ends with `/` (`SeedServer` serves
        /// them), so no seed disk is needed.
        case noCloudNet(url: String)
    }

    /// The firmware the machine boots.
    public enum Firmware: Codable, Sendable, Hashable {
        /// OVMF. `code` is mapped read-only; `variables` is the template copied once per machine, so
        /// boot entries one machine writes never leak into another.
        case uefi(code: String = Firmware.ovmfCode, variables: String = Firmware.ovmfVariables)
        /// SeaBIOS, QEMU's built-in default, for legacy images and direct kernel boot.
        case bios

        /// Debian's OVMF with a 4 MiB flash layout (package `ovmf`).
        public static let ovmfCode = "/usr/share/OVMF/OVMF_CODE_4M.fd"
        /// Its variable store template.
        public static let ovmfVariables = "/usr/share/OVMF/OVMF_VARS_4M.fd"
    }

    /// A kernel booted by QEMU itself (`-kernel`/`-initrd`/`-append`).
    public struct DirectKernelBoot: Codable, Sendable, Hashable {
        public var kernel: String
        public var initrd: String?
        /// The kernel command line, passed as one argument.
        public var commandLine: String?

        public init(kernel: String, initrd: String? = nil, commandLine: String? = nil) {
            self.kernel = kernel
            self.initrd = initrd
            self.commandLine = commandLine
        }
    }

    /// The emulated board.
    public enum MachineType: String, Codable, Sendable, Hashable, CaseIterable {
        /// The modern PC (ICH9, PCIe, AHCI): what cloud images expect.
        case q35
        /// A minimal board with virtio-mmio devices and no PCI: boots a kernel in a fraction of the time,
        /// but only through direct kernel boot, with no UEFI and no display.
        case microvm
    }

    /// The guest's network.
    public struct Network: Codable, Sendable, Hashable {
        /// How the network device is backed.
        public var mode: Mode = .user
        /// Forwards from the host to the guest (user-mode networking only).
        public var forwards: [PortForward] = []
        /// Forward a host port on 127.0.0.1 to the guest's SSH port 22 (user-mode networking only).
        public var forwardSSH: Bool = true
        /// The host port for SSH; nil picks a free one at each start.
        public var sshHostPort: UInt16?
        /// The guest's MAC address; nil derives a stable one from the machine name.
        public var macAddress: String?
        /// More NICs, each on a host network (`nimbus network`), after the first.
        public var attachments: [Attachment] = []

        public init(
            mode: Mode = .user, forwards: [PortForward] = [], forwardSSH: Bool = true, sshHostPort: UInt16? = nil,
            macAddress: String? = nil, attachments: [Attachment] = []
        ) {
            self.mode = mode
            self.forwards = forwards
            self.forwardSSH = forwardSSH
            self.sshHostPort = sshHostPort
            self.macAddress = macAddress
            self.attachments = attachments
        }

        /// A NIC on a host network: a bridge the QEMU driver reaches through qemu-bridge-helper, or the
        /// libvirt network of that name.
        public struct Attachment: Codable, Sendable, Hashable {
            /// The Nimbus network's name.
            public var network: String
            /// The host bridge the NIC's tap joins.
            public var bridge: String
            public var macAddress: String

            public init(network: String, bridge: String, macAddress: String) {
                self.network = network
                self.bridge = bridge
                self.macAddress = macAddress
            }
        }

        public init(from decoder: any Decoder) throws {
            let container = try decoder.container(keyedBy: CodingKeys.self)
            mode = try container.decodeIfPresent(Mode.self, forKey: .mode) ?? .user
            forwards = try container.decodeIfPresent([PortForward].self, forKey: .forwards) ?? []
            forwardSSH = try container.decodeIfPresent(Bool.self, forKey: .forwardSSH) ?? true
            sshHostPort = try container.decodeIfPresent(UInt16.self, forKey: .sshHostPort)
            macAddress = try container.decodeIfPresent(String.self, forKey: .macAddress)
            attachments = try container.decodeIfPresent([Attachment].self, forKey: .attachments) ?? []
        }

        /// The network backend.
        public enum Mode: Codable, Sendable, Hashable {
            /// QEMU's user-mode stack (slirp): no privileges, the guest is 10.0.2.15 behind NAT.
            case user
            /// A tap device on a host bridge through qemu-bridge-helper (the bridge must be allowed in
            /// /etc/qemu/bridge.conf).
            case bridge(name: String)
            /// An existing tap interface.
            case tap(name: String)
            /// No network device at all.
            case none
        }
    }

    /// A host port forwarded to a guest port.
    public struct PortForward: Codable, Sendable, Hashable, CustomStringConvertible {
        public enum Transport: String, Codable, Sendable, Hashable { case tcp, udp }
        public var hostPort: UInt16
        public var guestPort: UInt16
        public var transport: Transport = .tcp
        /// The host address to listen on: loopback unless the user asks otherwise.
        public var hostAddress: String = "127.0.0.1"

        public init(hostPort: UInt16, guestPort: UInt16, transport: Transport = .tcp, hostAddress: String = "127.0.0.1")
        {
            self.hostPort = hostPort
            self.guestPort = guestPort
            self.transport = transport
            self.hostAddress = hostAddress
        }

        public init(from decoder: any Decoder) throws {
            let container = try decoder.container(keyedBy: CodingKeys.self)
            hostPort = try container.decode(UInt16.self, forKey: .hostPort)
            guestPort = try container.decode(UInt16.self, forKey: .guestPort)
            transport = try container.decodeIfPresent(Transport.self, forKey: .transport) ?? .tcp
            hostAddress = try container.decodeIfPresent(String.self, forKey: .hostAddress) ?? "127.0.0.1"
        }

        /// Parses `HOST:GUEST` or `HOST:GUEST/udp` (`--forward 8080:80`).
        public init(parsing text: String) throws(NimbusError) {
            var spec = Substring(text)
            var transport = Transport.tcp
            if let slash = spec.lastIndex(of: "/") {
                guard let parsed = Transport(rawValue: spec[spec.index(after: slash)...].lowercased()) else {
                    throw Self.invalid(text)
                }
                transport = parsed
                spec = spec[..<slash]
            }
            let parts = spec.split(separator: ":", omittingEmptySubsequences: false)
            guard parts.count == 2, let host = UInt16(parts[0]), let guest = UInt16(parts[1]), host > 0, guest > 0
            else { throw Self.invalid(text) }
            self.init(hostPort: host, guestPort: guest, transport: transport)
        }

        private static func invalid(_ text: String) -> NimbusError {
            NimbusError(
                .invalidArgument,
                "port forward \"\(text)\" is not HOST:GUEST[/udp]: write two ports from 1 to 65535, like 8080:80 or 5353:53/udp"
            )
        }

        /// `8080:80/tcp`.
        public var description: String { "\(hostPort):\(guestPort)/\(transport.rawValue)" }
    }

    /// The serial console, written to `serial.log` in the machine's folder.
    public struct Console: Codable, Sendable, Hashable {
        /// The log is cut to its last `logLimit` bytes when the machine stops, and the previous boot's log
        /// is kept as `serial.log.1`: QEMU's file chardev cannot cap a file itself.
        public var logLimit: ByteSize = .mebibytes(8)

        public init(logLimit: ByteSize = .mebibytes(8)) { self.logLimit = logLimit }

        public init(from decoder: any Decoder) throws {
            let container = try decoder.container(keyedBy: CodingKeys.self)
            logLimit = try container.decodeIfPresent(ByteSize.self, forKey: .logLimit) ?? .mebibytes(8)
        }
    }

    /// A host folder shared into the guest, mounted there by its tag: over virtiofs
    /// (`mount -t virtiofs TAG DIR`, served by a virtiofsd the machine owns) or over 9p
    /// (`mount -t 9p -o trans=virtio,version=9p2000.L TAG DIR`, served by QEMU itself).
    public struct Share: Codable, Sendable, Hashable {
        public var hostPath: String
        /// The mount tag the guest mounts by (at most 31 bytes).
        public var tag: String
        public var readOnly: Bool = false
        /// How 9p maps guest ownership onto host files (virtiofs passes ownership through as it is).
        public var securityModel: SecurityModel = .mappedXattr
        /// The file system protocol; a stored share without one is 9p, the only one before virtiofs.
        public var transport: Transport = .virtiofs

        public init(
            hostPath: String, tag: String, readOnly: Bool = false, securityModel: SecurityModel = .mappedXattr,
            transport: Transport = .virtiofs
        ) {
            self.hostPath = hostPath
            self.tag = tag
            self.readOnly = readOnly
            self.securityModel = securityModel
            self.transport = transport
        }

        public init(from decoder: any Decoder) throws {
            let container = try decoder.container(keyedBy: CodingKeys.self)
            hostPath = try container.decode(String.self, forKey: .hostPath)
            tag = try container.decode(String.self, forKey: .tag)
            readOnly = try container.decodeIfPresent(Bool.self, forKey: .readOnly) ?? false
            securityModel = try container.decodeIfPresent(SecurityModel.self, forKey: .securityModel) ?? .mappedXattr
            transport = try container.decodeIfPresent(Transport.self, forKey: .transport) ?? .ninep
        }

        /// The file system protocol a share uses.
        public enum Transport: String, Codable, Sendable, Hashable, CaseIterable {
            /// virtio-fs: a vhost-user device backed by virtiofsd; needs the guest's memory shared
            /// (memfd). Every current distribution kernel has it, Debian's cloud kernel included.
            case virtiofs
            /// virtio-9p, served by QEMU. Many cloud kernels have no 9p (Debian's `cloud-amd64`).
            case ninep = "9p"
        }

        /// How guest ownership and modes map onto host files.
        public enum SecurityModel: String, Codable, Sendable, Hashable {
            /// Guest credentials are kept in extended attributes; host files keep the host user's.
            case mappedXattr = "mapped-xattr"
            /// Files are created with the QEMU user's credentials; guest chown fails silently.
            case none
        }
    }
}
