import Foundation
import NimbusCore
import NimbusMachines

extension QEMUCommandLine {
    /// The command line that starts `config` in `directory`: daemonized, with a pidfile, a QMP socket and
    /// the serial console in the folder, on the accelerator decided already, with SSH on `sshHostPort`.
    ///
    /// Devices are explicit (`-nodefaults`, `-no-user-config`): nothing depends on QEMU's defaults or on
    /// /etc/qemu, so the same config gives the same machine on every host.
    public static func machine(
        _ config: MachineConfig,
        in directory: MachineDirectory,
        accelerator: Accelerator,
        sshHostPort: UInt16?,
        executable: String = "qemu-system-x86_64"
    ) throws(NimbusError) -> QEMUCommandLine {
        try config.validate()
        let microvm = config.machineType == .microvm
        // microvm has no PCI bus: its virtio devices sit on virtio-mmio and are named "-device".
        let bus = microvm ? "device" : "pci"
        var options: [Option] = []
        func add(_ name: String, _ value: String? = nil) { options.append(Option(name, value)) }
        func add(_ name: String, _ head: String?, _ properties: KeyValuePairs<String, String>) {
            options.append(Option(name, head, properties))
        }

        add("-name", nil, ["guest": config.name])
        add("-no-user-config")
        add("-nodefaults")
        // virtiofsd reads and writes the guest's memory itself: with a virtiofs share, the RAM is a memfd
        // shared with it (vhost-user), named as the machine's memory backend.
        let sharedMemory = config.shares.contains { $0.transport == .virtiofs }
        if sharedMemory {
            add(
                "-object", "memory-backend-memfd",
                ["id": "ram0", "size": "\(config.memory.bytes >> 20)M", "share": "on"])
        }
        if microvm {
            // Option ROMs and the legacy PIT/PIC only slow a direct kernel boot (kvm-clock calibrates the TSC);
            // the ISA serial port is the console. QEMUDriver refuses microvm under TCG (see there).
            if sharedMemory {
                add(
                    "-machine", "microvm",
                    [
                        "x-option-roms": "off", "pit": "off", "pic": "off", "isa-serial": "on", "rtc": "on",
                        "memory-backend": "ram0",
                    ])
            } else {
                add(
                    "-machine", "microvm",
                    ["x-option-roms": "off", "pit": "off", "pic": "off", "isa-serial": "on", "rtc": "on"])
            }
        } else if sharedMemory {
            add("-machine", "q35", ["memory-backend": "ram0"])
        } else {
            add("-machine", "q35")
        }
        switch accelerator {
        case .kvm:
            add("-accel", "kvm")
        case .tcg:
            // MTTCG: one host thread per vCPU instead of all vCPUs on one.
            add("-accel", "tcg", ["thread": "multi"])
        }
        add("-cpu", config.cpuModel ?? accelerator.defaultCPUModel)
        add("-smp", "\(config.cpus)")
        add("-m", "\(config.memory.bytes >> 20)M")

        if case .uefi(let code, _) = config.firmware {
            add("-drive", nil, ["if": "pflash", "format": "raw", "unit": "0", "file": code, "readonly": "on"])
            add(
                "-drive", nil,
                ["if": "pflash", "format": "qcow2", "unit": "1", "file": directory.firmwareVariables.path])
        }
        if let kernel = config.kernel {
            add("-kernel", kernel.kernel)
            if let initrd = kernel.initrd { add("-initrd", initrd) }
            if let commandLine = kernel.commandLine { add("-append", commandLine) }
        }

        // One virtio-scsi controller for every SCSI device (disks and the seed CD-ROM), made on first use.
        var scsiController = false
        func needSCSIController() {
            guard !scsiController else { return }
            add("-device", "virtio-scsi-\(bus)", ["id": "scsi0"])
            scsiController = true
        }
        for (index, disk) in config.disks.enumerated() {
            let id = "disk\(index)"
            var drive: KeyValuePairs<String, String> = [
                "if": "none", "id": id, "file": disk.path, "format": disk.format.rawValue,
                // The guest's TRIM/discard reaches the image, so deleted files give space back to the host.
                "discard": "unmap", "detect-zeroes": "unmap",
            ]
            if disk.readOnly {
                drive = ["if": "none", "id": id, "file": disk.path, "format": disk.format.rawValue, "readonly": "on"]
            }
            add("-drive", nil, drive)
            let boot = index == 0 && config.kernel == nil ? "0" : nil
            switch disk.interface {
            case .virtioBlk:
                var device = [(key: "drive", value: id), (key: "id", value: "\(id)-dev")]
                if let boot { device.append((key: "bootindex", value: boot)) }
                if let serial = disk.serial { device.append((key: "serial", value: serial)) }
                options.append(Option("-device", "virtio-blk-\(bus)", device))
            case .virtioSCSI:
                needSCSIController()
                if let boot {
                    add("-device", "scsi-hd", ["drive": id, "id": "\(id)-dev", "bus": "scsi0.0", "bootindex": boot])
                } else {
                    add("-device", "scsi-hd", ["drive": id, "id": "\(id)-dev", "bus": "scsi0.0"])
                }
            }
        }

        switch config.seed {
        case .none:
            break
        case .noCloud(let iso):
            if microvm {
                add("-drive", nil, ["if": "none", "id": "seed", "file": iso, "format": "raw", "readonly": "on"])
                add("-device", "virtio-blk-device", ["drive": "seed", "id": "seed-dev"])
            } else {
                // A CD-ROM on virtio-scsi (sr_mod), not on q35's AHCI: cloud kernels have virtio-scsi and
                // sr_mod, and some (Debian's cloud-amd64) have no AHCI, so an ide-cd seed is never seen there.
                needSCSIController()
                add(
                    "-drive", nil,
                    ["if": "none", "id": "seed", "file": iso, "format": "raw", "media": "cdrom", "readonly": "on"])
                add("-device", "scsi-cd", ["drive": "seed", "id": "seed-dev", "bus": "scsi0.0"])
            }
        case .ignition(let config):
            add("-fw_cfg", nil, ["name": "opt/com.coreos/config", "file": config])
        case .noCloudNet(let url):
            // `nocloud-net`, not `nocloud`: cloud-init up to 23.x accepts an http(s) seedfrom only from the
            // network-stage datasource, and with `ds=nocloud` it pins dsmode to local, so the network stage
            // would fetch the seed and then exit without running the init modules (DataSourceNoCloud.py,
            // load_cmdline_data; cmd/main.py). Newer cloud-init keeps `nocloud-net` as an alias.
            add("-smbios", "type=1", ["serial": "ds=nocloud-net;s=\(url)"])
        }

        switch config.network.mode {
        case .none:
            break
        case .user:
            var rules: [String] = []
            if config.network.forwardSSH, let sshHostPort { rules.append("tcp:127.0.0.1:\(sshHostPort)-:22") }
            for forward in config.network.forwards {
                rules.append(
                    "\(forward.transport.rawValue):\(forward.hostAddress):\(forward.hostPort)-:\(forward.guestPort)")
            }
            let value = (["user", "id=net0"] + rules.map { "hostfwd=\(escape($0))" }).joined(separator: ",")
            add("-netdev", value)
        case .bridge(let name):
            add("-netdev", "bridge", ["id": "net0", "br": name])
        case .tap(let name):
            add("-netdev", "tap", ["id": "net0", "ifname": name, "script": "no", "downscript": "no"])
        }
        if config.network.mode != .none {
            if microvm {
                add("-device", "virtio-net-device", ["netdev": "net0", "mac": config.macAddress])
            } else {
                // No option ROM: Nimbus never boots from the network, and the firmware loading and starting
                // iPXE costs 0.2-0.7 s under TCG (OVMF has its own virtio-net driver for UEFI networking).
                add("-device", "virtio-net-pci", ["netdev": "net0", "mac": config.macAddress, "romfile": ""])
            }
        }
        // Each network NIC is a tap that qemu-bridge-helper plugs into the network's bridge.
        for (index, attachment) in config.network.attachments.enumerated() {
            let id = "net\(index + 1)"
            add("-netdev", "bridge", ["id": id, "br": attachment.bridge])
            if microvm {
                add("-device", "virtio-net-device", ["netdev": id, "mac": attachment.macAddress])
            } else {
                add("-device", "virtio-net-pci", ["netdev": id, "mac": attachment.macAddress, "romfile": ""])
            }
        }

        if config.randomNumberGenerator {
            add("-object", "rng-random", ["id": "rng0", "filename": "/dev/urandom"])
            add("-device", "virtio-rng-\(bus)", ["rng": "rng0"])
        }

        for (index, share) in config.shares.enumerated() {
            let id = "fs\(index)"
            switch share.transport {
            case .virtiofs:
                // virtiofsd (started by QEMUDriver before QEMU) listens on this socket, relative to the folder.
                add("-chardev", "socket", ["id": id, "path": MachineDirectory.virtiofsSocketName(index)])
                add("-device", "vhost-user-fs-\(bus)", ["chardev": id, "tag": share.tag, "queue-size": "1024"])
            case .ninep:
                if share.readOnly {
                    add(
                        "-fsdev", "local",
                        [
                            "id": id, "path": share.hostPath, "security_model": share.securityModel.rawValue,
                            "readonly": "on",
                        ])
                } else {
                    add(
                        "-fsdev", "local",
                        ["id": id, "path": share.hostPath, "security_model": share.securityModel.rawValue])
                }
                add("-device", "virtio-9p-\(bus)", ["fsdev": id, "mount_tag": share.tag])
            }
        }

        // The serial console is a socket a person can attach to (`nimbus console`), and QEMU also appends
        // everything the guest prints to the log file, attached or not; with nobody attached, output is
        // only logged, never blocked. Nimbus rotates the log at start and caps it at stop.
        add(
            "-chardev", "socket",
            [
                "id": "serial0", "path": MachineDirectory.consoleSocketName, "server": "on", "wait": "off",
                "logfile": directory.serialLog.path, "logappend": "on",
            ])
        add("-serial", "chardev:serial0")

        add("-display", "none")
        if config.vnc {
            add("-device", "VGA")
            add("-vnc", "unix:\(MachineDirectory.vncSocketName)")
        }

        add("-chardev", "socket", ["id": "qmp", "path": MachineDirectory.qmpSocketName, "server": "on", "wait": "off"])
        add("-mon", nil, ["chardev": "qmp", "mode": "control"])
        // QEMU reports start-up errors on stderr, then forks, writes the pidfile and lets its parent exit
        // with the status: the caller learns success or the error, and QEMU lives on in its own session.
        add("-pidfile", directory.pidFile.path)
        add("-daemonize")

        return QEMUCommandLine(
            executable: executable, options: options, extraArguments: config.extraArguments,
            workingDirectory: directory.url.path)
    }
}
