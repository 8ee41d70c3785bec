import Foundation
import NimbusCore
import NimbusTestSupport
import Testing

@testable import NimbusLibvirt
@testable import NimbusMachines

/// The domain XML rendered from `MachineConfig`: a golden document, and every rendered document checked
/// against libvirt's own RelaxNG schema with `virt-xml-validate`.
@Suite("Libvirt domain XML")
struct LibvirtDomainXMLTests {
    static let directory = MachineDirectory(
        URL(fileURLWithPath: "/home/alice/.local/share/nimbus/instances/web/machine"))

    /// The group a user's QEMU runs with: libvirt-qemu where it exists (`Owner.processGroup`).
    static let qemuGroup = getgrnam("libvirt-qemu").map { $0.pointee.gr_gid } ?? 1000

    /// The config `nimbus launch` builds for a cloud image with a NoCloud seed.
    static var cloudImage: MachineConfig {
        var config = MachineConfig(name: "web")
        config.cpus = 2
        config.memory = .mebibytes(1024)
        config.disks = [MachineConfig.Disk(path: directory.url.path + "/overlay.qcow2")]
        config.seed = .noCloud(iso: directory.url.path + "/seed.iso")
        config.network.forwards = [MachineConfig.PortForward(hostPort: 8080, guestPort: 80)]
        return config
    }

    /// Checks `xml` with `virt-xml-validate FILE domain`; returns its complaint, nil when valid.
    static func validate(_ xml: String) async throws -> String? {
        let file = FileManager.default.temporaryDirectory.appending(path: "nimbus-domain-\(UUID().uuidString).xml")
        try xml.write(to: file, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(at: file) }
        let result = try await ProgramRunner.output("virt-xml-validate", [file.path, "domain"])
        return result.status == 0 ? nil : result.standardError + result.standardOutput
    }

    static let golden = """
        <domain type='qemu' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
          <name>nimbus-web</name>
          <metadata>
            <nimbus:instance xmlns:nimbus="https://nimbus.dev/xmlns/instance/1"><nimbus:name>web</nimbus:name><nimbus:folder>/home/alice/.local/share/nimbus/instances/web/machine</nimbus:folder><nimbus:origin>build-host</nimbus:origin><nimbus:sshPort>2222</nimbus:sshPort></nimbus:instance>
          </metadata>
          <memory unit='MiB'>1024</memory>
          <vcpu>2</vcpu>
          <os>
            <type arch='x86_64' machine='q35'>hvm</type>
            <loader readonly='yes' type='pflash'>/usr/share/OVMF/OVMF_CODE_4M.fd</loader>
            <nvram template='/usr/share/OVMF/OVMF_VARS_4M.fd'>/home/alice/.local/share/nimbus/instances/web/machine/efi-vars.fd</nvram>
          </os>
          <features>
            <acpi/>
            <apic/>
          </features>
          <cpu mode='custom' match='exact' check='none'>
            <model fallback='forbid'>qemu64</model>
            <feature policy='require' name='ssse3'/>
            <feature policy='require' name='sse4.1'/>
            <feature policy='require' name='sse4.2'/>
            <feature policy='require' name='popcnt'/>
          </cpu>
          <clock offset='utc'/>
          <on_poweroff>destroy</on_poweroff>
          <on_reboot>restart</on_reboot>
          <on_crash>destroy</on_crash>
          <devices>
            <disk type='file' device='disk'>
              <driver name='qemu' type='qcow2' discard='unmap' detect_zeroes='unmap'/>
              <source file='/home/alice/.local/share/nimbus/instances/web/machine/overlay.qcow2'/>
              <target dev='vda' bus='virtio'/>
              <boot order='1'/>
            </disk>
            <disk type='file' device='cdrom'>
              <driver name='qemu' type='raw'/>
              <source file='/home/alice/.local/share/nimbus/instances/web/machine/seed.iso'/>
              <target dev='sda' bus='scsi'/>
              <readonly/>
            </disk>
            <controller type='scsi' model='virtio-scsi'/>
            <controller type='usb' model='none'/>
            <serial type='pty'>
              <log file='/home/alice/.local/share/nimbus/instances/web/machine/serial.log' append='on'/>
              <target type='isa-serial' port='0'>
                <model name='isa-serial'/>
              </target>
            </serial>
            <console type='pty'>
              <target type='serial' port='0'/>
            </console>
            <rng model='virtio'>
              <backend model='random'>/dev/urandom</backend>
            </rng>
            <memballoon model='none'/>
          </devices>
          <seclabel type='static' model='dac' relabel='no'>
            <label>+1000:+\(qemuGroup)</label>
          </seclabel>
          <qemu:commandline>
            <qemu:arg value='-netdev'/>
            <qemu:arg value='user,id=nimbus-net0,hostfwd=tcp:127.0.0.1:2222-:22,hostfwd=tcp:127.0.0.1:8080-:80'/>
            <qemu:arg value='-device'/>
            <qemu:arg value='virtio-net-pci,netdev=nimbus-net0,mac=\(cloudImage.macAddress),bus=pcie.0,addr=0x10,romfile='/>
          </qemu:commandline>
        </domain>

        """

    @Test("a cloud image with a NoCloud seed renders the golden document, which libvirt's schema accepts")
    func golden() async throws {
        let xml = try LibvirtDomainXML.render(
            Self.cloudImage, in: Self.directory, accelerator: .tcg, sshHostPort: 2222,
            owner: LibvirtDomainXML.Owner(uid: 1000, gid: 1000), origin: "build-host")
        #expect(xml == Self.golden)
        let complaint = try await Self.validate(xml)
        #expect(complaint == nil, "\(complaint ?? "")")
    }

    @Test("KVM renders a kvm domain with host-passthrough")
    func kvm() async throws {
        let xml = try LibvirtDomainXML.render(
            Self.cloudImage, in: Self.directory, accelerator: .kvm, sshHostPort: 2222, owner: nil)
        #expect(xml.hasPrefix("<domain type='kvm'"))
        #expect(xml.contains("<cpu mode='host-passthrough' check='none'/>"))
        #expect(!xml.contains("seclabel"))
        #expect(try await Self.validate(xml) == nil)
    }

    @Test("a CPU model renders as QEMU's -cpu would: max as maximum, features required or disabled")
    func cpuModels() async throws {
        var config = Self.cloudImage
        config.cpuModel = "max"
        var xml = try LibvirtDomainXML.render(
            config, in: Self.directory, accelerator: .tcg, sshHostPort: 2222, owner: nil)
        #expect(xml.contains("<cpu mode='maximum' check='none'/>"))
        config.cpuModel = "Haswell-v4,-hle,la57=off,+avx2"
        xml = try LibvirtDomainXML.render(config, in: Self.directory, accelerator: .tcg, sshHostPort: 2222, owner: nil)
        #expect(xml.contains("<model fallback='forbid'>Haswell-v4</model>"))
        #expect(xml.contains("<feature policy='disable' name='hle'/>"))
        #expect(xml.contains("<feature policy='disable' name='la57'/>"))
        #expect(xml.contains("<feature policy='require' name='avx2'/>"))
        #expect(try await Self.validate(xml) == nil)
    }

    @Test("a CPU option libvirt cannot express is refused, naming it")
    func cpuOptionWithoutLibvirtEquivalent() throws {
        var config = Self.cloudImage
        config.cpuModel = "qemu64,level=13"
        #expect {
            try LibvirtDomainXML.render(config, in: Self.directory, accelerator: .tcg, sshHostPort: 2222, owner: nil)
        } throws: { error in
            (error as? NimbusError)?.message.contains("\"level=13\" has no libvirt equivalent") == true
        }
    }

    @Test("BIOS, Ignition, virtio-scsi, a bridge, a share and VNC render a valid document")
    func variants() async throws {
        var config = MachineConfig(name: "core")
        config.firmware = .bios
        config.disks = [
            MachineConfig.Disk(path: "/srv/core/overlay.qcow2", interface: .virtioSCSI),
            MachineConfig.Disk(path: "/srv/core/data.raw", format: .raw, readOnly: true),
        ]
        config.seed = .ignition(config: "/srv/core/config.ign")
        config.network = MachineConfig.Network(mode: .bridge(name: "br0"))
        config.shares = [MachineConfig.Share(hostPath: "/srv/src", tag: "src", readOnly: true, transport: .ninep)]
        config.vnc = true
        let xml = try LibvirtDomainXML.render(
            config, in: Self.directory, accelerator: .tcg, sshHostPort: nil, owner: nil)
        #expect(!xml.contains("<loader"))
        #expect(xml.contains("<entry name='opt/com.coreos/config' file='/srv/core/config.ign'/>"))
        #expect(xml.contains("<target dev='sda' bus='scsi'/>"))
        #expect(xml.contains("<controller type='scsi' model='virtio-scsi'/>"))
        #expect(xml.contains("<source bridge='br0'/>"))
        #expect(xml.contains("<target dir='src'/>"))
        #expect(!xml.contains("qemu:commandline"))
        let complaint = try await Self.validate(xml)
        #expect(complaint == nil, "\(complaint ?? "")")
    }

    @Test("a virtiofs share: shared memfd memory, a virtiofs filesystem libvirt serves; valid for libvirt's schema")
    func virtiofs() async throws {
        var config = MachineConfig(name: "web")
        config.disks = [MachineConfig.Disk(path: "/srv/web/overlay.qcow2")]
        config.seed = .noCloud(iso: "/srv/web/seed.iso")
        config.shares = [MachineConfig.Share(hostPath: "/home/alice/src", tag: "nimbus0")]
        let xml = try LibvirtDomainXML.render(
            config, in: Self.directory, accelerator: .tcg, sshHostPort: 2222, owner: nil)
        #expect(
            xml.contains(
                """
                  <memoryBacking>
                    <source type='memfd'/>
                    <access mode='shared'/>
                  </memoryBacking>
                """))
        #expect(
            xml.contains(
                """
                    <filesystem type='mount' accessmode='passthrough'>
                      <driver type='virtiofs' queue='1024'/>
                      <source dir='/home/alice/src'/>
                      <target dir='nimbus0'/>
                    </filesystem>
                """))
        // The seed CD-ROM is on virtio-scsi, with its controller.
        #expect(xml.contains("<target dev='sda' bus='scsi'/>"))
        #expect(xml.contains("<controller type='scsi' model='virtio-scsi'/>"))
        let complaint = try await Self.validate(xml)
        #expect(complaint == nil, "\(complaint ?? "")")
    }

    @Test("a NIC on a Nimbus network is an interface on its libvirt network, with its MAC and no option ROM")
    func networkAttachment() async throws {
        var config = Self.cloudImage
        config.network.attachments = [
            MachineConfig.Network.Attachment(network: "back", bridge: "nmb-back", macAddress: "52:54:00:12:34:56")
        ]
        let xml = try LibvirtDomainXML.render(
            config, in: Self.directory, accelerator: .tcg, sshHostPort: 2222, owner: nil)
        #expect(
            xml.contains(
                """
                    <interface type='network'>
                      <mac address='52:54:00:12:34:56'/>
                      <source network='nimbus-back'/>
                      <model type='virtio'/>
                      <rom enabled='no'/>
                    </interface>
                """), "\(xml)")
        let complaint = try await Self.validate(xml)
        #expect(complaint == nil, "\(complaint ?? "")")
    }

    @Test("NoCloud over HTTP goes through the SMBIOS serial, direct kernel boot has no boot order")
    func noCloudNet() async throws {
        var config = MachineConfig(name: "net")
        config.firmware = .bios
        config.disks = [MachineConfig.Disk(path: "/srv/net/overlay.qcow2")]
        config.kernel = MachineConfig.DirectKernelBoot(
            kernel: "/srv/vmlinuz", initrd: "/srv/initrd.img", commandLine: "root=/dev/vda1 console=ttyS0")
        config.seed = .noCloudNet(url: "http://10.0.2.2:8000/")
        config.extraArguments = ["-global", "ICH9-LPC.disable_s3=1"]
        let xml = try LibvirtDomainXML.render(
            config, in: Self.directory, accelerator: .tcg, sshHostPort: 2200, owner: nil)
        #expect(xml.contains("<entry name='serial'>ds=nocloud;s=http://10.0.2.2:8000/</entry>"))
        #expect(xml.contains("<smbios mode='sysinfo'/>"))
        #expect(!xml.contains("<boot order"))
        #expect(xml.contains("<qemu:arg value='ICH9-LPC.disable_s3=1'/>"))
        let complaint = try await Self.validate(xml)
        #expect(complaint == nil, "\(complaint ?? "")")
    }

    @Test("names and paths with XML characters are escaped, and the metadata reads back")
    func escaping() async throws {
        var config = Self.cloudImage
        config.disks = [MachineConfig.Disk(path: "/tmp/a&b/<o'v>.qcow2")]
        let directory = MachineDirectory(URL(fileURLWithPath: "/tmp/a&b \"q\""))
        let xml = try LibvirtDomainXML.render(
            config, in: directory, accelerator: .tcg, sshHostPort: 2222, owner: nil, origin: "h<1>")
        #expect(xml.contains("/tmp/a&amp;b/&lt;o&apos;v&gt;.qcow2"))
        #expect(try await Self.validate(xml) == nil)
        let metadata = LibvirtDomainXML.Metadata(name: "web", folder: directory.url.path, origin: "h<1>")
        #expect(LibvirtDomainXML.Metadata(element: metadata.element) == metadata)
        // libvirt may give the namespace another prefix, or none, when it returns the element.
        let unprefixed =
            "<instance>\n  <name>web</name>\n  <folder>\(LibvirtDomainXML.escape(directory.url.path))</folder>\n  <origin>h&lt;1&gt;</origin>\n</instance>\n"
        #expect(LibvirtDomainXML.Metadata(element: unprefixed) == metadata)
        let rewritten = metadata.element.replacingOccurrences(of: "nimbus:", with: "ns0:")
            .replacingOccurrences(of: "xmlns:nimbus", with: "xmlns:ns0")
        #expect(LibvirtDomainXML.Metadata(element: rewritten) == metadata)
        #expect(LibvirtDomainXML.Metadata(element: "<other><name>web</name><folder>/x</folder></other>") == nil)
    }

    @Test("annotations and the SSH port ride in the metadata, any bytes, and read back; a UUID is kept")
    func annotations() async throws {
        var config = Self.cloudImage
        config.annotations = ["spec": "name: web\nuserData: \"</nimbus:annotation>&'\"\n", "state": "{\"é\": 1}"]
        let xml = try LibvirtDomainXML.render(
            config, in: Self.directory, accelerator: .tcg, sshHostPort: 2201, owner: nil, origin: "h",
            uuid: "6f1c2a34-0b7d-4e53-9a3c-2f6d1e0b9a77")
        #expect(xml.contains("<uuid>6f1c2a34-0b7d-4e53-9a3c-2f6d1e0b9a77</uuid>"))
        #expect(try await Self.validate(xml) == nil)
        let metadata = LibvirtDomainXML.Metadata(
            name: "web", folder: Self.directory.url.path, origin: "h", sshPort: 2201, annotations: config.annotations)
        #expect(xml.contains(metadata.element))
        #expect(LibvirtDomainXML.Metadata(element: metadata.element) == metadata)
        // As libvirt 9.0 returns it: no prefix, double quotes, indented.
        let returned = metadata.element.replacingOccurrences(of: "nimbus:", with: "")
            .replacingOccurrences(of: "><", with: ">\n  <")
        #expect(LibvirtDomainXML.Metadata(element: returned) == metadata)
    }

    @Test("a microvm machine is refused with the way out")
    func microvm() throws {
        var config = MachineConfig(name: "tiny")
        config.machineType = .microvm
        config.firmware = .bios
        config.kernel = MachineConfig.DirectKernelBoot(kernel: "/srv/vmlinuz")
        let error = #expect(throws: NimbusError.self) {
            try LibvirtDomainXML.render(config, in: Self.directory, accelerator: .tcg, sshHostPort: nil, owner: nil)
        }
        #expect(error?.message.contains("--driver qemu") == true)
    }
}
