import ArgumentParser
import Foundation
import NimbusCore
import NimbusInstances
import NimbusMachines
import NimbusSeed

/// `nimbus launch`: a new instance from an image, ready when cloud-init has finished.
struct InstanceLaunch: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "launch",
        abstract: "Create and start an instance from a cloud image.",
        discussion: """
            IMAGE is a reference (ubuntu:24.04, debian:12, fedora-coreos:stable), a local file or an https URL; \
            the default comes from config.yaml (else ubuntu:lts). Returns when cloud-init has finished, \
            reporting each boot phase on stderr; exits non-zero naming the failed modules if cloud-init failed.
            """
    )

    @OptionGroup var global: Flags.Global
    @OptionGroup var resources: Flags.Resources

    @Argument(help: "The image to launch from.")
    var image: String?

    @Option(name: .shortAndLong, help: "The instance name (default: two generated words).")
    var name: String?

    @Option(help: "cloud-init user-data for the instance ('-' reads standard input).")
    var cloudInit: String?

    @Option(
        help: ArgumentHelp(
            "Your own Ignition config (spec 3.x JSON) for a CoreOS image, merged with Nimbus's.",
            discussion: """
                Kept as written: Nimbus's config (keys, host keys, hostname) merges it through \
                ignition.config.merge, so where both set something yours wins. Checked with \
                ignition-validate where installed.
                """))
    var ignition: String?

    @Option(help: "An OpenSSH public key to authorise for the default user (repeatable).")
    var sshKey: [String] = []

    @Option(help: "The guest's hostname (default: the instance name).")
    var hostname: String?

    @Option(help: "The guest's locale, like en_GB.UTF-8.")
    var locale: String?

    @Option(help: "The guest's timezone, like Europe/Paris.")
    var timezone: String?

    @Option(help: "Share a host folder: HOST:GUEST (repeatable).")
    var mount: [String] = []

    @Option(
        help: ArgumentHelp(
            "How --mount folders reach the guest: auto, virtiofs or 9p.",
            discussion: """
                auto (the default) is virtiofs, served by a virtiofsd the instance owns, which every current \
                distribution kernel mounts, Debian's cloud kernel included; 9p only where virtiofsd cannot run, \
                with a warning. 9p is served by QEMU itself, and many cloud kernels cannot mount it. A mount the \
                guest cannot make fails the launch, naming it. Decided once, at launch.
                """))
    var mountType: MountType = .auto

    @Option(help: "Forward a port on 127.0.0.1: HOST:GUEST[/udp] (repeatable).")
    var forward: [String] = []

    @Option(
        help: ArgumentHelp(
            "Join a network: NAME[:ADDRESS] (repeatable; `nimbus network create` makes one).",
            discussion:
                "The instance gets a NIC on the network with a fixed address (the given one, or one Nimbus picks) that it keeps for life, and resolves the network's other instances by name."
        ))
    var network: [String] = []

    @Option(
        help: ArgumentHelp(
            "Route the guest's traffic out through this --network (one made with --nat).",
            discussion:
                "Without it the guest goes out through QEMU's user-mode NIC, which then keeps only SSH and --forward.",
            valueName: "network"))
    var defaultRoute: String?

    @Option(
        help: ArgumentHelp(
            "Mount a data volume: NAME:PATH, or NAME:PATH:SIZE to make it when missing (repeatable).",
            discussion:
                "A volume outlives the instance (`delete --purge` gives it back) and serves one instance at a time; `nimbus volume` manages them."
        ))
    var volume: [String] = []

    @Option(help: "A scratch disk made empty at every start: SIZE[:MOUNTPOINT] (default /mnt).")
    var ephemeral: String?

    @Option(help: "Accelerator: auto, kvm or tcg.")
    var accel: AcceleratorChoice?

    @Option(
        help: ArgumentHelp(
            "Firmware: auto, uefi or bios.",
            discussion: """
                auto (the default) picks BIOS when the machine runs under TCG and the image boots by BIOS too, as \
                Ubuntu's, Debian's and Fedora CoreOS's images do: OVMF spends ~6 s emulated before the bootloader \
                runs, SeaBIOS under 1 s. UEFI otherwise. Decided once, at launch.
                """))
    var firmware: FirmwareChoice?

    @Option(
        help: ArgumentHelp(
            "The guest's CPU model, as QEMU's -cpu (like max, host, or qemu64,+avx2).",
            discussion: """
                Default: host under KVM; under TCG an x86-64-v2 qemu64, which emulates faster than max. \
                Guests built for x86-64-v3 (RHEL 10) need --cpu-model max under TCG.
                """))
    var cpuModel: String?

    @Option(help: "Machine driver: qemu or libvirt (default from config.yaml, else qemu).")
    var driver: DriverKind?

    @Option(help: "The libvirt URI, with --driver libvirt (default qemu:///system).")
    var connect: String?

    @Option(help: "The libvirt storage pool for the disks, with --driver libvirt (default nimbus, made when missing).")
    var pool: String?

    @Option(help: "Boot this kernel directly instead of the disk's bootloader.")
    var kernel: String?

    @Option(help: "The initrd for --kernel.")
    var initrd: String?

    @Option(help: "The kernel command line for --kernel, like 'root=LABEL=root console=ttyS0'.")
    var cmdline: String?

    @Option(help: "Seconds to wait for the instance to be ready.")
    var timeout: Int = 600

    @Flag(
        help:
            "Return once QEMU has started (with --seed-over-http, once the guest has fetched its seed), without waiting for cloud-init."
    )
    var noWait = false

    @Flag(
        help: ArgumentHelp(
            "Serve the NoCloud seed over HTTP instead of attaching a seed disk.",
            discussion: """
                The guest is told http://10.0.2.2:PORT/ in its SMBIOS serial number; Nimbus listens on 127.0.0.1 only. \
                Nimbus has no daemon: this launch, and every later `nimbus start`, stays until the guest has fetched \
                its seed, even with --no-wait. Needs cloud-init with NoCloud over HTTP (ds=nocloud-net).
                """))
    var seedOverHttp = false

    @Option(
        help: ArgumentHelp(
            "The seed disk's format: nocloud (cidata, the default), configdrive (OpenStack's config-2) or ovf (VMware's OVF environment).",
            discussion: """
                The same personality each way; configdrive and ovf are for images whose cloud-init reads only \
                those datasources, and show what the guest will see on OpenStack or VMware.
                """))
    var seedFormat: SeedFormat = .nocloud

    @Option(help: "Output format: table or json.")
    var format: OutputFormat = .table

    func validate() throws {
        if kernel == nil, initrd != nil || cmdline != nil {
            throw ValidationError("--initrd and --cmdline go with --kernel")
        }
        for (flag, path) in [("--kernel", kernel), ("--initrd", initrd)] {
            if let path, !FileManager.default.isReadableFile(atPath: Self.absolute(path)) {
                throw ValidationError("\(flag) \(path) cannot be read: check the path")
            }
        }
        if seedFormat == .ignition {
            throw ValidationError("--seed-format ignition: give --ignition FILE with a CoreOS image instead")
        }
        if ignition != nil, seedFormat != .nocloud {
            throw ValidationError(
                "--ignition configures CoreOS through fw_cfg: it takes no --seed-format \(seedFormat)")
        }
        if seedOverHttp, seedFormat != .nocloud {
            throw ValidationError("--seed-over-http serves NoCloud files: it takes no --seed-format \(seedFormat)")
        }
        try validating {
            if let name { _ = try InstanceName(name) }
            if let driver { _ = try DriverChoice(kind: driver, connect: connect, pool: pool) }
            guard timeout > 0 else { throw ValidationError("--timeout must be a positive number of seconds") }
            for text in forward { _ = try MachineConfig.PortForward(parsing: text) }
            var attachments = try network.map { try NetworkAttachment(parsing: $0) }
            if let defaultRoute {
                try NetworkAttachment.route(&attachments, via: defaultRoute, option: "--default-route")
            }
            if let ephemeral { _ = try EphemeralDisk(parsing: ephemeral) }
            for text in volume { _ = try VolumeAttachment.parse(text) }
        }
    }

    func run() async throws {
        let context = try CommandContext(global: global)
        let store = InstanceStore(paths: context.paths)
        let instanceName =
            try name.map { try InstanceName($0) }
            ?? InstanceName.generate(avoiding: Set(store.names().map(\.rawValue)))
        var spec = InstanceSpec(name: instanceName, image: image, defaults: context.config)
        if let cpus = resources.cpus { spec.cpus = cpus }
        if let memory = resources.memory { spec.memory = try ByteSize(parsing: memory, what: "--memory") }
        if let disk = resources.disk { spec.disk = try ByteSize(parsing: disk, what: "--disk") }
        spec.hostname = hostname
        spec.locale = locale
        spec.timezone = timezone
        if let accel { spec.accelerator = accel }
        if let firmware { spec.firmware = firmware }
        if let cpuModel { spec.cpuModel = cpuModel }
        spec.driver = try DriverChoice(kind: driver ?? spec.driver.kind, connect: connect, pool: pool)
        spec.forwards = try forward.map { try MachineConfig.PortForward(parsing: $0) }
        spec.networks = try network.map { try NetworkAttachment(parsing: $0) }
        if let defaultRoute {
            try NetworkAttachment.route(&spec.networks, via: defaultRoute, option: "--default-route")
        }
        spec.mounts = try mount.map { try Mount(parsing: $0) }
        spec.mountType = mountType
        spec.ephemeral = try ephemeral.map { try EphemeralDisk(parsing: $0) }
        var volumeSizes: [String: ByteSize] = [:]
        for text in volume {
            let (attachment, size) = try VolumeAttachment.parse(text)
            spec.volumes.append(attachment)
            volumeSizes[attachment.volume] = size
        }
        spec.kernel = kernel.map {
            .init(kernel: Self.absolute($0), initrd: initrd.map(Self.absolute), commandLine: cmdline)
        }
        spec.sshAuthorizedKeys = try sshKey.map {
            try readPublicKey(URL(fileURLWithPath: ($0 as NSString).expandingTildeInPath))
        }
        if let cloudInit { spec.setUserData(Array(try readUserData(cloudInit))) }
        if let ignition { spec.ignition = try readIgnition(ignition) }
        if seedOverHttp { spec.seedTransport = .http }
        switch seedFormat {
        case .nocloud, .ignition: break
        case .configdrive: spec.seedTransport = .configDrive
        case .ovf: spec.seedTransport = .ovf
        }

        let info = try await context.manager.launch(
            spec, volumeSizes: volumeSizes, wait: !noWait, timeout: .seconds(timeout))
        if format == .json {
            Console.result(try OutputRenderer.render(info, columns: [], rows: [], format: .json))
        } else {
            Console.result("\(info.name) is \(info.state.rawValue): `nimbus shell \(info.name)` to log in\n")
        }
    }
}

extension InstanceLaunch {
    /// `path` made absolute against the working folder, with `~` expanded.
    static func absolute(_ path: String) -> String {
        URL(fileURLWithPath: (path as NSString).expandingTildeInPath).standardizedFileURL.path
    }
}

/// Reads `--ignition FILE` and checks that it is an Ignition 3.x config, with errors that name the file.
func readIgnition(_ argument: String) throws -> String {
    do {
        let url = URL(fileURLWithPath: (argument as NSString).expandingTildeInPath)
        return try UserIgnition.read(url, option: "--ignition").text
    } catch {
        throw error.nimbusError
    }
}

/// Reads `--cloud-init FILE` (or `-`, standard input), with an error that names the file.
/// The bytes are kept as they are: gzip'ed user-data reaches the guest untouched.
func readUserData(_ argument: String) throws -> Data {
    if argument == "-" { return FileHandle.standardInput.readDataToEndOfFile() }
    let url = URL(fileURLWithPath: (argument as NSString).expandingTildeInPath)
    guard let data = FileManager.default.contents(atPath: url.path) else {
        throw NimbusError(.invalidArgument, "cannot read --cloud-init \(url.path): check the path and its permissions")
    }
    return data
}
