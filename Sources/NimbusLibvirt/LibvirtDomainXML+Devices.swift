import Foundation
import NimbusCore
import NimbusMachines

extension LibvirtDomainXML {
    static func devices(
        _ config: MachineConfig, _ directory: MachineDirectory, serialLog: String?, into x: XMLWriter
    ) {
        let letters = Array("abcdefghijklmnopqrstuvwxyz")
        var virtioCount = 0
        var scsiCount = 0
        for (index, disk) in config.disks.enumerated() {
            x.line("<disk type='file' device='disk'>")
            x.indent {
                if disk.readOnly {
                    x.line("<driver name='qemu' type='\(disk.format.rawValue)'/>")
                } else {
                    // The guest's TRIM reaches the image, so deleted files give space back to the host.
                    x.line("<driver name='qemu' type='\(disk.format.rawValue)' discard='unmap' detect_zeroes='unmap'/>")
                }
                x.line("<source file='\(escape(disk.path))'/>")
                switch disk.interface {
                case .virtioBlk:
                    x.line("<target dev='vd\(letters[virtioCount % 26])' bus='virtio'/>")
                    virtioCount += 1
                case .virtioSCSI:
                    x.line("<target dev='sd\(letters[scsiCount % 26])' bus='scsi'/>")
                    scsiCount += 1
                }
                if disk.readOnly { x.line("<readonly/>") }
                if let serial = disk.serial { x.line("<serial>\(escape(serial))</serial>") }
                if index == 0 && config.kernel == nil { x.line("<boot order='1'/>") }
            }
            x.line("</disk>")
        }
        if case .noCloud(let iso) = config.seed {
            x.line("<disk type='file' device='cdrom'>")
            x.indent {
                x.line("<driver name='qemu' type='raw'/>")
                x.line("<source file='\(escape(iso))'/>")
                // On virtio-scsi, as with the QEMU driver: cloud kernels have it and sr_mod, and some have no
                // AHCI (q35's SATA), where a seed on bus='sata' is never seen. Its letter follows the SCSI disks.
                x.line("<target dev='sd\(letters[scsiCount % 26])' bus='scsi'/>")
                x.line("<readonly/>")
            }
            x.line("</disk>")
            scsiCount += 1
        }
        if scsiCount > 0 { x.line("<controller type='scsi' model='virtio-scsi'/>") }
        // Like the QEMU driver's -nodefaults: no USB controller nobody plugs anything into.
        x.line("<controller type='usb' model='none'/>")

        switch config.network.mode {
        case .none, .user:
            // User-mode networking is passed through to QEMU; see README.md.
            break
        case .bridge(let name):
            x.line("<interface type='bridge'>")
            x.indent {
                x.line("<mac address='\(config.macAddress)'/>")
                x.line("<source bridge='\(escape(name))'/>")
                x.line("<model type='virtio'/>")
            }
            x.line("</interface>")
        case .tap(let name):
            x.line("<interface type='ethernet'>")
            x.indent {
                x.line("<mac address='\(config.macAddress)'/>")
                x.line("<target dev='\(escape(name))' managed='no'/>")
                x.line("<model type='virtio'/>")
            }
            x.line("</interface>")
        }

        // Each network NIC is on the libvirt network of that Nimbus network, which plugs its tap in.
        for attachment in config.network.attachments {
            x.line("<interface type='network'>")
            x.indent {
                x.line("<mac address='\(escape(attachment.macAddress))'/>")
                x.line("<source network='\(escape(LibvirtNetworks.libvirtName(attachment.network)))'/>")
                x.line("<model type='virtio'/>")
                // No option ROM, as on the QEMU driver's NICs: Nimbus never boots from the network.
                x.line("<rom enabled='no'/>")
            }
            x.line("</interface>")
        }

        for share in config.shares {
            switch share.transport {
            case .virtiofs:
                // libvirt starts and ends the virtiofsd itself (found through QEMU's vhost-user descriptors);
                // the domain's memory is shared with it (memoryBacking above).
                x.line("<filesystem type='mount' accessmode='passthrough'>")
                x.indent {
                    x.line("<driver type='virtiofs' queue='1024'/>")
                    x.line("<source dir='\(escape(share.hostPath))'/>")
                    x.line("<target dir='\(escape(share.tag))'/>")
                }
            case .ninep:
                let mode = share.securityModel == .mappedXattr ? "mapped" : "squash"
                x.line("<filesystem type='mount' accessmode='\(mode)'>")
                x.indent {
                    x.line("<source dir='\(escape(share.hostPath))'/>")
                    x.line("<target dir='\(escape(share.tag))'/>")
                    if share.readOnly { x.line("<readonly/>") }
                }
            }
            x.line("</filesystem>")
        }

        // The serial console: a pty (virDomainOpenConsole, `virsh console`), and everything the guest
        // prints is also appended to serial.log by virtlogd.
        x.line("<serial type='pty'>")
        x.indent {
            x.line("<log file='\(escape(serialLog ?? directory.serialLog.path))' append='on'/>")
            x.line("<target type='isa-serial' port='0'>")
            x.indent { x.line("<model name='isa-serial'/>") }
            x.line("</target>")
        }
        x.line("</serial>")
        x.line("<console type='pty'>")
        x.indent { x.line("<target type='serial' port='0'/>") }
        x.line("</console>")

        if config.vnc {
            x.line("<graphics type='vnc' socket='\(escape(directory.vncSocket.path))'/>")
            x.line("<video>")
            x.indent { x.line("<model type='vga'/>") }
            x.line("</video>")
        }
        if config.randomNumberGenerator {
            x.line("<rng model='virtio'>")
            x.indent { x.element("backend", "/dev/urandom", attributes: "model='random'") }
            x.line("</rng>")
        }
        // Like the QEMU driver's -nodefaults: no balloon the guest did not ask for.
        x.line("<memballoon model='none'/>")
    }
}
