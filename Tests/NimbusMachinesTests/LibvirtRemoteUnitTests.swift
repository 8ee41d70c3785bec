import Foundation
import NimbusCore
import NimbusTestSupport
import Testing

@testable import NimbusLibvirt
@testable import NimbusMachines

/// What changes for a daemon on another host, checked without one: the rendered domain and the refusals.
@Suite("libvirt remote hosts (no daemon)")
struct LibvirtRemoteUnitTests {
    @Test(
        "a remote domain keeps UEFI variables in the pool, the serial log on that host, and forwards SSH on all its addresses; libvirt's schema accepts it"
    )
    func remoteRendering() async throws {
        var config = LibvirtDomainXMLTests.cloudImage
        config.disks = [MachineConfig.Disk(path: "/var/lib/libvirt/images/nimbus/nimbus-web-abc123-disk.qcow2")]
        config.seed = .noCloud(iso: "/var/lib/libvirt/images/nimbus/nimbus-web-abc123-seed.iso")
        let files = LibvirtRemote.HostFiles(
            nvram: "/var/lib/libvirt/images/nimbus/nimbus-web-abc123-VARS.fd",
            serialLog: "/var/log/libvirt/qemu/nimbus-web-serial.log", forwardAddress: "0.0.0.0")
        let xml = try LibvirtDomainXML.render(
            config, in: LibvirtDomainXMLTests.directory, accelerator: .tcg, sshHostPort: 40022, owner: nil,
            origin: "laptop", hostFiles: files)
        #expect(xml.contains(">/var/lib/libvirt/images/nimbus/nimbus-web-abc123-VARS.fd</nvram>"))
        #expect(xml.contains("<log file='/var/log/libvirt/qemu/nimbus-web-serial.log' append='on'/>"))
        #expect(xml.contains("hostfwd=tcp:0.0.0.0:40022-:22"))
        #expect(xml.contains("<source file='/var/lib/libvirt/images/nimbus/nimbus-web-abc123-disk.qcow2'/>"))
        // The metadata still names the folder on the host that launched it.
        #expect(xml.contains("<nimbus:folder>\(LibvirtDomainXMLTests.directory.url.path)</nimbus:folder>"))
        #expect(!xml.contains("seclabel"))
        #expect(try await LibvirtDomainXMLTests.validate(xml) == nil)
    }

    @Test("the host of a URI, for SSH; none for a local URI")
    func hosts() {
        #expect(LibvirtRemote.host(of: "qemu+ssh://root@build.example/system?keyfile=/k") == "build.example")
        #expect(LibvirtRemote.host(of: "qemu+tcp://10.0.0.7:16509/system") == "10.0.0.7")
        #expect(LibvirtRemote.host(of: "qemu:///system") == nil)
        #expect(LibvirtRemote.host(of: "qemu:///session") == nil)
        #expect(LibvirtDriver.isLocal("qemu:///system?socket=/run/x"))
        #expect(!LibvirtDriver.isLocal("qemu+tcp://h/system"))
    }

    @Test(
        "what needs this host's files is refused for a remote host, before anything happens, with the way out",
        arguments: ["mount", "vnc", "kernel", "http-seed"])
    func remoteRefusals(_ what: String) async throws {
        var config = MachineConfig(name: "far")
        switch what {
        case "mount": config.shares = [MachineConfig.Share(hostPath: "/home/alice/src", tag: "nimbus0")]
        case "vnc": config.vnc = true
        case "kernel": config.kernel = MachineConfig.DirectKernelBoot(kernel: "/boot/vmlinuz")
        default: config.seed = .noCloudNet(url: "http://10.0.2.2:8000/")
        }
        try await TemporaryDirectory.with { home in
            // Refused before any connection: the host of this URI does not exist.
            let driver = LibvirtDriver(uri: "qemu+tcp://far.invalid/system", hostFactsCache: nil)
            let error = await #expect(throws: NimbusError.self) {
                try await driver.start(config, in: MachineDirectory(home.url))
            }
            #expect(error?.code == .unsupported)
            #expect(error?.message.contains("far.invalid") == true, "\(error?.message ?? "")")
            #expect(FileManager.default.fileExists(atPath: home.url.appending(path: "libvirt.json").path) == false)
        }
    }

    @Test("the base volume is named by the image's SHA-256, read from a content-addressed cache name or computed")
    func baseNames() async throws {
        let digest = String(repeating: "ab", count: 32)
        #expect(
            LibvirtStorage.baseVolumeName(sha256: digest, format: .qcow2) == "nimbus-base-abababababababab.qcow2")
        #expect(try await LibvirtStorage.sha256(of: URL(fileURLWithPath: "/nowhere/\(digest).img")) == digest)
        try await TemporaryDirectory.with { home in
            let file = home.url.appending(path: "image.qcow2")
            try Data("abc".utf8).write(to: file)
            #expect(
                try await LibvirtStorage.sha256(of: file)
                    == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        }
    }
}
