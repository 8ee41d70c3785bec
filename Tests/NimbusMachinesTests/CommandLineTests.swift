import Foundation
import NimbusCore
import NimbusTestSupport
import Testing

@testable import NimbusMachines
@testable import NimbusQEMU

/// Golden command lines: no QEMU needed. Each expected array is what QEMU gets, argument by argument.
@Suite("QEMU command lines")
struct CommandLineTests {
    static let directory = MachineDirectory(URL(fileURLWithPath: "/var/lib/nimbus/instances/web"))

    @Test("the default machine: q35, UEFI with its own variable store, TCG, virtio disk and seed CD, SSH on loopback")
    func defaultMachine() throws {
        var config = MachineConfig(name: "web")
        config.disks = [.init(path: "/var/lib/nimbus/instances/web/disk.qcow2")]
        config.seed = .noCloud(iso: "/var/lib/nimbus/instances/web/seed.iso")
        let line = try QEMUCommandLine.machine(config, in: Self.directory, accelerator: .tcg, sshHostPort: 40022)
        #expect(line.workingDirectory == "/var/lib/nimbus/instances/web")
        #expect(
            line.render() == [
                "qemu-system-x86_64",
                "-name", "guest=web",
                "-no-user-config",
                "-nodefaults",
                "-machine", "q35",
                "-accel", "tcg,thread=multi",
                "-cpu", "qemu64,+ssse3,+sse4.1,+sse4.2,+popcnt",
                "-smp", "2",
                "-m", "2048M",
                "-drive", "if=pflash,format=raw,unit=0,file=/usr/share/OVMF/OVMF_CODE_4M.fd,readonly=on",
                "-drive", "if=pflash,format=qcow2,unit=1,file=/var/lib/nimbus/instances/web/efi-vars.qcow2",
                "-drive",
                "if=none,id=disk0,file=/var/lib/nimbus/instances/web/disk.qcow2,format=qcow2,discard=unmap,detect-zeroes=unmap",
                "-device", "virtio-blk-pci,drive=disk0,id=disk0-dev,bootindex=0",
                "-device", "virtio-scsi-pci,id=scsi0",
                "-drive",
                "if=none,id=seed,file=/var/lib/nimbus/instances/web/seed.iso,format=raw,media=cdrom,readonly=on",
                "-device", "scsi-cd,drive=seed,id=seed-dev,bus=scsi0.0",
                "-netdev", "user,id=net0,hostfwd=tcp:127.0.0.1:40022-:22",
                "-device", "virtio-net-pci,netdev=net0,mac=\(config.macAddress),romfile=",
                "-object", "rng-random,id=rng0,filename=/dev/urandom",
                "-device", "virtio-rng-pci,rng=rng0",
                "-chardev",
                "socket,id=serial0,path=console.sock,server=on,wait=off,logfile=/var/lib/nimbus/instances/web/serial.log,logappend=on",
                "-serial", "chardev:serial0",
                "-display", "none",
                "-chardev", "socket,id=qmp,path=qmp.sock,server=on,wait=off",
                "-mon", "chardev=qmp,mode=control",
                "-pidfile", "/var/lib/nimbus/instances/web/qemu.pid",
                "-daemonize",
            ])
    }

    @Test("KVM uses -cpu host and no TCG options")
    func kvm() throws {
        let line = try QEMUCommandLine.machine(
            MachineConfig(name: "k"), in: Self.directory, accelerator: .kvm, sshHostPort: 2222)
        let arguments = line.arguments
        #expect(arguments.contains("kvm"))
        #expect(arguments.firstIndex(of: "-cpu").map { arguments[$0 + 1] } == "host")
        #expect(!arguments.contains { $0.contains("tcg") })
    }

    @Test("a configured CPU model replaces the accelerator's default; one that is not a QEMU -cpu value is refused")
    func cpuModel() throws {
        var config = MachineConfig(name: "c")
        config.cpuModel = "max,la57=off"
        let arguments = try QEMUCommandLine.machine(config, in: Self.directory, accelerator: .tcg, sshHostPort: 2222)
            .arguments
        #expect(arguments.firstIndex(of: "-cpu").map { arguments[$0 + 1] } == "max,la57=off")
        for bad in ["", ",+avx", "max -snapshot", "max;reboot"] {
            config.cpuModel = bad
            #expect {
                try QEMUCommandLine.machine(config, in: Self.directory, accelerator: .tcg, sshHostPort: 2222)
            } throws: { error in
                (error as? NimbusError)?.message.contains("is not a model name with optional features") == true
            }
        }
    }

    @Test(
        "direct kernel boot on microvm with BIOS: virtio-mmio devices, the seed as a read-only virtio disk, Ignition by fw_cfg"
    )
    func microvm() throws {
        var config = MachineConfig(name: "tiny")
        config.cpus = 1
        config.memory = .mebibytes(512)
        config.machineType = .microvm
        config.firmware = .bios
        config.kernel = .init(
            kernel: "/img/vmlinuz", initrd: "/img/initrd.img", commandLine: "console=ttyS0 root=/dev/vda1 ro")
        config.disks = [.init(path: "/d/disk.qcow2")]
        config.seed = .ignition(config: "/d/ignition,1.json")
        config.network = .init(
            mode: .user,
            forwards: [.init(hostPort: 8080, guestPort: 80), .init(hostPort: 5353, guestPort: 53, transport: .udp)],
            forwardSSH: true, sshHostPort: 2200, macAddress: "52:54:00:aa:bb:cc")
        config.randomNumberGenerator = false
        let line = try QEMUCommandLine.machine(config, in: Self.directory, accelerator: .tcg, sshHostPort: 2200)
        #expect(
            line.arguments == [
                "-name", "guest=tiny",
                "-no-user-config",
                "-nodefaults",
                "-machine", "microvm,x-option-roms=off,pit=off,pic=off,isa-serial=on,rtc=on",
                "-accel", "tcg,thread=multi",
                "-cpu", "qemu64,+ssse3,+sse4.1,+sse4.2,+popcnt",
                "-smp", "1",
                "-m", "512M",
                "-kernel", "/img/vmlinuz",
                "-initrd", "/img/initrd.img",
                "-append", "console=ttyS0 root=/dev/vda1 ro",
                "-drive", "if=none,id=disk0,file=/d/disk.qcow2,format=qcow2,discard=unmap,detect-zeroes=unmap",
                "-device", "virtio-blk-device,drive=disk0,id=disk0-dev",
                "-fw_cfg", "name=opt/com.coreos/config,file=/d/ignition,,1.json",
                "-netdev",
                "user,id=net0,hostfwd=tcp:127.0.0.1:2200-:22,hostfwd=tcp:127.0.0.1:8080-:80,hostfwd=udp:127.0.0.1:5353-:53",
                "-device", "virtio-net-device,netdev=net0,mac=52:54:00:aa:bb:cc",
                "-chardev",
                "socket,id=serial0,path=console.sock,server=on,wait=off,logfile=/var/lib/nimbus/instances/web/serial.log,logappend=on",
                "-serial", "chardev:serial0",
                "-display", "none",
                "-chardev", "socket,id=qmp,path=qmp.sock,server=on,wait=off",
                "-mon", "chardev=qmp,mode=control",
                "-pidfile", "/var/lib/nimbus/instances/web/qemu.pid",
                "-daemonize",
            ])
    }

    @Test("each network NIC is a bridge netdev through qemu-bridge-helper after the user-mode NIC, with its MAC")
    func networkAttachments() throws {
        var config = MachineConfig(name: "web")
        config.network.attachments = [
            .init(network: "n1", bridge: "nmb-n1", macAddress: "52:54:00:00:00:11"),
            .init(network: "n2", bridge: "nmb-n2", macAddress: "52:54:00:00:00:12"),
        ]
        let arguments = try QEMUCommandLine.machine(config, in: Self.directory, accelerator: .tcg, sshHostPort: 2222)
            .arguments
        func values(of option: String) -> [String] {
            arguments.indices.filter { arguments[$0] == option }.map { arguments[$0 + 1] }
        }
        #expect(
            values(of: "-netdev") == [
                "user,id=net0,hostfwd=tcp:127.0.0.1:2222-:22", "bridge,id=net1,br=nmb-n1", "bridge,id=net2,br=nmb-n2",
            ])
        #expect(values(of: "-device").contains("virtio-net-pci,netdev=net1,mac=52:54:00:00:00:11,romfile="))
        #expect(values(of: "-device").contains("virtio-net-pci,netdev=net2,mac=52:54:00:00:00:12,romfile="))
    }

    @Test("virtio-scsi disks share one controller; 9p shares, a bridge, VNC on a socket and extra arguments")
    func scsiSharesBridgeVNC() throws {
        var config = MachineConfig(name: "db")
        config.firmware = .bios
        config.disks = [
            .init(path: "/d/disk.qcow2", interface: .virtioSCSI),
            .init(path: "/d/scratch.raw", format: .raw, interface: .virtioSCSI),
        ]
        config.shares = [
            .init(hostPath: "/home/me/src", tag: "src", transport: .ninep),
            .init(hostPath: "/srv/data, old", tag: "data", readOnly: true, securityModel: .none, transport: .ninep),
        ]
        config.network = .init(mode: .bridge(name: "br0"), macAddress: "52:54:00:00:00:01")
        config.vnc = true
        config.seed = .noCloudNet(url: "http://10.0.2.2:8000/")
        config.extraArguments = ["-device", "pvpanic"]
        let line = try QEMUCommandLine.machine(config, in: Self.directory, accelerator: .tcg, sshHostPort: nil)
        let arguments = line.arguments
        func values(of option: String) -> [String] {
            arguments.indices.filter { arguments[$0] == option }.map { arguments[$0 + 1] }
        }
        #expect(
            values(of: "-device") == [
                "virtio-scsi-pci,id=scsi0",
                "scsi-hd,drive=disk0,id=disk0-dev,bus=scsi0.0,bootindex=0",
                "scsi-hd,drive=disk1,id=disk1-dev,bus=scsi0.0",
                "virtio-net-pci,netdev=net0,mac=52:54:00:00:00:01,romfile=",
                "virtio-rng-pci,rng=rng0",
                "virtio-9p-pci,fsdev=fs0,mount_tag=src",
                "virtio-9p-pci,fsdev=fs1,mount_tag=data",
                "VGA",
                "pvpanic",
            ])
        #expect(
            values(of: "-fsdev") == [
                "local,id=fs0,path=/home/me/src,security_model=mapped-xattr",
                "local,id=fs1,path=/srv/data,, old,security_model=none,readonly=on",
            ])
        #expect(values(of: "-netdev") == ["bridge,id=net0,br=br0"])
        #expect(values(of: "-vnc") == ["unix:vnc.sock"])
        #expect(values(of: "-smbios") == ["type=1,serial=ds=nocloud-net;s=http://10.0.2.2:8000/"])
        #expect(!arguments.contains { $0.contains("pflash") })
        #expect(Array(arguments.suffix(2)) == ["-device", "pvpanic"])
    }

    @Test(
        "virtiofs shares: the RAM is a shared memfd backend, each share a vhost-user-fs device on its virtiofsd's socket"
    )
    func virtiofsShares() throws {
        var config = MachineConfig(name: "web")
        config.memory = .mebibytes(1536)
        config.disks = [.init(path: "/d/disk.qcow2")]
        config.shares = [
            .init(hostPath: "/home/me/src", tag: "nimbus0"), .init(hostPath: "/srv/site", tag: "nimbus1"),
        ]
        let arguments = try QEMUCommandLine.machine(config, in: Self.directory, accelerator: .tcg, sshHostPort: 2222)
            .arguments
        func values(of option: String) -> [String] {
            arguments.indices.filter { arguments[$0] == option }.map { arguments[$0 + 1] }
        }
        #expect(values(of: "-object").first == "memory-backend-memfd,id=ram0,size=1536M,share=on")
        #expect(values(of: "-machine") == ["q35,memory-backend=ram0"])
        #expect(values(of: "-m") == ["1536M"])
        #expect(
            values(of: "-chardev").prefix(2) == [
                "socket,id=fs0,path=virtiofs0.sock", "socket,id=fs1,path=virtiofs1.sock",
            ])
        #expect(
            values(of: "-device").filter { $0.hasPrefix("vhost-user-fs") } == [
                "vhost-user-fs-pci,chardev=fs0,tag=nimbus0,queue-size=1024",
                "vhost-user-fs-pci,chardev=fs1,tag=nimbus1,queue-size=1024",
            ])
        #expect(!arguments.contains("-fsdev"))
        // Without a virtiofs share, the memory is QEMU's own, as before.
        config.shares = [.init(hostPath: "/home/me/src", tag: "nimbus0", transport: .ninep)]
        let plain = try QEMUCommandLine.machine(config, in: Self.directory, accelerator: .tcg, sshHostPort: 2222)
            .arguments
        #expect(!plain.contains { $0.contains("memory-backend") })
    }

    @Test("a path with a comma is escaped for QEMU and passed as one argument, spaces and quotes untouched")
    func escaping() throws {
        var config = MachineConfig(name: "odd")
        config.firmware = .bios
        config.disks = [.init(path: "/tmp/my disk,v2 'x'.qcow2")]
        config.network.mode = .none
        let line = try QEMUCommandLine.machine(config, in: Self.directory, accelerator: .tcg, sshHostPort: nil)
        #expect(
            line.arguments.contains(
                "if=none,id=disk0,file=/tmp/my disk,,v2 'x'.qcow2,format=qcow2,discard=unmap,detect-zeroes=unmap"))
        #expect(!line.arguments.contains { $0.hasPrefix("-netdev") })
        #expect(line.displayString.contains(#"'if=none,id=disk0,file=/tmp/my disk,,v2 '\''x'\''.qcow2"#))
    }

    @Test("the MAC address is stable per name and in QEMU's range")
    func macAddress() {
        let first = MachineConfig(name: "web").macAddress
        #expect(first == MachineConfig(name: "web").macAddress)
        #expect(first != MachineConfig(name: "db").macAddress)
        #expect(first.hasPrefix("52:54:00:"))
        #expect(first.count == 17)
    }
}

@Suite("Machine configuration")
struct MachineConfigTests {
    func rejects(_ change: (inout MachineConfig) -> Void, saying expected: String) {
        var config = MachineConfig(name: "m")
        change(&config)
        do {
            try config.validate()
            Issue.record("accepted a config that should fail with \(expected)")
        } catch {
            #expect(error.code == .invalidArgument)
            #expect(error.message.contains(expected), "\(error.message)")
        }
    }

    @Test("values QEMU would reject late are rejected early, naming the value and the fix")
    func validation() {
        rejects({ $0.cpus = 0 }, saying: "cpus 0 is out of range")
        rejects({ $0.memory = .mebibytes(16) }, saying: "memory 16M is not usable")
        rejects({ $0.memory = ByteSize(bytes: (1 << 30) + 512) }, saying: "in whole MiB")
        rejects({ $0.machineType = .microvm }, saying: "add --kernel")
        rejects(
            {
                $0.machineType = .microvm
                $0.kernel = .init(kernel: "/k")
            }, saying: "use --firmware bios")
        rejects(
            {
                $0.machineType = .microvm
                $0.kernel = .init(kernel: "/k")
                $0.firmware = .bios
                $0.vnc = true
            }, saying: "drop --vnc")
        rejects(
            { $0.network.forwards = [.init(hostPort: 80, guestPort: 80), .init(hostPort: 80, guestPort: 81)] },
            saying: "host port 80/tcp is forwarded twice")
        rejects(
            {
                $0.network.sshHostPort = 2222
                $0.network.forwards = [.init(hostPort: 2222, guestPort: 80)]
            }, saying: "host port 2222/tcp is forwarded twice")
        rejects(
            {
                $0.network.mode = .bridge(name: "br0")
                $0.network.forwards = [.init(hostPort: 80, guestPort: 80)]
            }, saying: "need user-mode networking")
        rejects({ $0.network.macAddress = "52:54:00:zz:00:01" }, saying: "MAC address \"52:54:00:zz:00:01\"")
        rejects(
            { $0.shares = [.init(hostPath: "/a", tag: String(repeating: "t", count: 32))] },
            saying: "mount tags are 1 to 31 bytes")
        rejects(
            { $0.shares = [.init(hostPath: "/a", tag: "a", readOnly: true)] },
            saying: "virtiofs cannot enforce here: mount it read-only in the guest, or use 9p")
        rejects(
            { $0.shares = [.init(hostPath: "/a", tag: "x"), .init(hostPath: "/b", tag: "x")] }, saying: "used twice")
        rejects({ $0.name = "" }, saying: "needs a name")
    }

    @Test("HOST:GUEST[/udp] forwards parse; anything else is rejected with the accepted form")
    func forwards() throws {
        #expect(try MachineConfig.PortForward(parsing: "8080:80") == .init(hostPort: 8080, guestPort: 80))
        #expect(
            try MachineConfig.PortForward(parsing: "5353:53/udp")
                == .init(hostPort: 5353, guestPort: 53, transport: .udp))
        #expect(try MachineConfig.PortForward(parsing: "5353:53/UDP").transport == .udp)
        for bad in ["8080", "0:80", "70000:80", "a:b", "80:80/sctp", "1:2:3", ""] {
            #expect(throws: NimbusError.self, "\(bad)") { try MachineConfig.PortForward(parsing: bad) }
        }
        do {
            _ = try MachineConfig.PortForward(parsing: "80:80/sctp")
        } catch {
            #expect(
                error.message
                    == "port forward \"80:80/sctp\" is not HOST:GUEST[/udp]: write two ports from 1 to 65535, like 8080:80 or 5353:53/udp"
            )
        }
    }

    @Test("a stored config with only a name decodes to the defaults, and a full one round-trips")
    func codable() throws {
        let minimal = try JSONDecoder().decode(MachineConfig.self, from: Data(#"{"name": "web"}"#.utf8))
        #expect(minimal == MachineConfig(name: "web"))
        #expect(
            minimal.firmware
                == .uefi(code: "/usr/share/OVMF/OVMF_CODE_4M.fd", variables: "/usr/share/OVMF/OVMF_VARS_4M.fd"))
        let partial = try JSONDecoder().decode(
            MachineConfig.self, from: Data(#"{"name": "web", "cpus": 4, "memory": "1G"}"#.utf8))
        #expect(partial.cpus == 4)
        #expect(partial.memory == .gibibytes(1))
        #expect(partial.network == MachineConfig.Network())
        let nested = try JSONDecoder().decode(
            MachineConfig.self,
            from: Data(
                #"{"name": "n", "disks": [{"path": "/d.qcow2"}], "network": {"sshHostPort": 2222, "forwards": [{"hostPort": 80, "guestPort": 8080}]}, "shares": [{"hostPath": "/s", "tag": "s"}], "seed": {"noCloud": {"iso": "/seed.iso"}}}"#
                    .utf8))
        #expect(nested.disks == [.init(path: "/d.qcow2")])
        #expect(nested.network == .init(forwards: [.init(hostPort: 80, guestPort: 8080)], sshHostPort: 2222))
        // A share stored before virtiofs existed was 9p.
        #expect(nested.shares == [.init(hostPath: "/s", tag: "s", transport: .ninep)])
        #expect(nested.seed == .noCloud(iso: "/seed.iso"))
        var full = MachineConfig(name: "full")
        full.disks = [.init(path: "/d", interface: .virtioSCSI)]
        full.seed = .ignition(config: "/i.json")
        full.firmware = .bios
        full.kernel = .init(kernel: "/k", initrd: "/i", commandLine: "quiet")
        full.network = .init(mode: .tap(name: "tap0"), forwardSSH: false)
        full.shares = [
            .init(hostPath: "/s", tag: "s", readOnly: true, transport: .ninep), .init(hostPath: "/v", tag: "v"),
        ]
        full.accelerator = .tcg
        let data = try JSONEncoder().encode(full)
        #expect(try JSONDecoder().decode(MachineConfig.self, from: data) == full)
    }
}
