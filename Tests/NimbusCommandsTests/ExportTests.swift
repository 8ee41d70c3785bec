import Foundation
import NimbusCore
import NimbusTestSupport
import Testing

/// `nimbus image export` through the binary, each output checked with the tools the platforms' own
/// importers rely on: qemu-img reads the VMDK and VHDX back (subformat, size, the guest's bytes), tar and
/// sha256sum check the OVA's order and manifest, Python's XML parser reads the OVF descriptor, and the
/// Glance properties are JSON (issue 18). The guest's side (these disks booting with a config drive or an
/// OVF environment) is in ExportGuestTests.
@Suite("Image export", .serialized, .requires(.programs("qemu-img", "tar", "sha256sum", "python3")))
struct ExportTests {
    /// A home with one imported image holding 8 MiB of random bytes in a 64 MiB disk, and its raw bytes.
    struct Scene {
        let home: TemporaryDirectory
        let raw: URL

        init() async throws {
            home = try TemporaryDirectory("nimbus-export")
            raw = home.url.appending(path: "source.raw")
            try await ProgramRunner.run("qemu-img", ["create", "-q", "-f", "raw", raw.path, "64M"])
            try await ProgramRunner.run(
                "dd",
                ["if=/dev/urandom", "of=\(raw.path)", "bs=1M", "count=8", "seek=4", "conv=notrunc", "status=none"])
            let qcow2 = home.url.appending(path: "source.qcow2")
            try await ProgramRunner.run(
                "qemu-img", ["convert", "-q", "-f", "raw", "-O", "qcow2", raw.path, qcow2.path])
            let imported = try await nimbus(["image", "import", qcow2.path, "--name", "web"])
            #expect(imported.status == 0, "\(imported.standardError)")
        }

        func nimbus(_ arguments: [String]) async throws -> ProgramOutput {
            try await NimbusBinary.run(arguments, home: home.url)
        }

        func out(_ name: String) -> URL { home.url.appending(path: "out").appending(path: name) }

        /// qemu-img's view of `file`.
        func info(_ file: URL) async throws -> [String: Any] {
            let text = try await ProgramRunner.run("qemu-img", ["info", "--output=json", file.path])
            return try #require(try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any])
        }

        /// `nimbus image import` takes another hypervisor's `file`, saying it converts it, and caches a qcow2
        /// with the source's bytes.
        func importsBack(_ file: URL, as format: String) async throws {
            let imported = try await nimbus([
                "image", "import", file.path, "--name", "back-\(format)", "--format", "json",
            ])
            #expect(imported.status == 0, "\(imported.standardError)")
            #expect(
                imported.standardError.contains("is a \(format) disk: converting it to qcow2"),
                "\(imported.standardError)")
            let image = try #require(
                try JSONSerialization.jsonObject(with: Data(imported.standardOutput.utf8)) as? [String: Any],
                "\(imported.standardOutput)")
            let path = try #require(image["path"] as? String)
            #expect(image["format"] as? String == "qcow2")
            #expect(try await sameBytes(URL(fileURLWithPath: path), format: "qcow2"))
        }

        /// The guest sees the same bytes in `file` as in the source.
        func sameBytes(_ file: URL, format: String) async throws -> Bool {
            try await ProgramRunner.output("qemu-img", ["compare", "-f", "raw", "-F", format, raw.path, file.path])
                .status == 0
        }
    }

    @Test("vmware: an OVA (descriptor, manifest, streamOptimized VMDK, in that order) whose hashes and capacity hold")
    func vmware() async throws {
        let scene = try await Scene()
        defer { scene.home.remove() }
        try FileManager.default.createDirectory(at: scene.out(""), withIntermediateDirectories: true)
        let userData = scene.home.url.appending(path: "user-data")
        try Data("#cloud-config\nhostname: from-ova\n".utf8).write(to: userData)
        let ova = scene.out("web.ova")
        let result = try await scene.nimbus([
            "image", "export", "web", "--target", "vmware", "-o", ova.path, "--cloud-init", userData.path,
        ])
        #expect(result.status == 0, "\(result.standardError)")
        #expect(result.standardError.contains("converting web to a streamOptimized VMDK"), "\(result.standardError)")
        let listing = try await ProgramRunner.run("tar", ["-tf", ova.path])
        #expect(listing == "web.ovf\nweb.mf\nweb-disk1.vmdk\n", "\(listing)")
        // POSIX ustar, as OVF asks: "ustar", NUL, "00" at offset 257 of the first header (GNU tar's own
        // format has "ustar  ", NUL).
        let header = try FileHandle(forReadingFrom: ova).read(upToCount: 512) ?? Data()
        #expect(
            Array(header.dropFirst(257).prefix(8)) == Array("ustar\u{0}00".utf8),
            "\(Array(header.dropFirst(257).prefix(8)))")

        let unpacked = scene.out("unpacked")
        try FileManager.default.createDirectory(at: unpacked, withIntermediateDirectories: true)
        try await ProgramRunner.run("tar", ["-xf", ova.path, "-C", unpacked.path])
        // The manifest's lines, as `sha256sum --check` reads them once reordered: "HASH  FILE".
        let manifest = try String(contentsOf: unpacked.appending(path: "web.mf"), encoding: .utf8)
        let lines = manifest.split(separator: "\n").map { line -> String in
            let parts = line.split(separator: "= ", maxSplits: 1)
            let name = parts[0].dropFirst("SHA256(".count).dropLast()
            return "\(parts[1])  \(name)"
        }
        #expect(lines.count == 2, "\(manifest)")
        let check = try await ProgramRunner.output(
            "sha256sum", ["--check", "--strict"], input: lines.joined(separator: "\n") + "\n",
            workingDirectory: unpacked)
        #expect(check.status == 0, "\(check.standardOutput)\(check.standardError)")

        let vmdk = unpacked.appending(path: "web-disk1.vmdk")
        let info = try await scene.info(vmdk)
        #expect(info["format"] as? String == "vmdk")
        #expect(info["virtual-size"] as? Int == 64 << 20)
        let specific = (info["format-specific"] as? [String: Any])?["data"] as? [String: Any]
        #expect(specific?["create-type"] as? String == "streamOptimized", "\(info)")
        #expect(try await ProgramRunner.output("qemu-img", ["check", vmdk.path]).status == 0)
        #expect(try await scene.sameBytes(vmdk, format: "vmdk"))
        // Imported back (a user bringing a VMware disk): converted to qcow2 on the way in, the same bytes.
        try await scene.importsBack(vmdk, as: "vmdk")

        // The descriptor, read by an XML parser: the disk's file, its size and capacity; cloud-init's keys.
        let script = """
            import sys, xml.etree.ElementTree as ET
            ns = {"ovf": "http://schemas.dmtf.org/ovf/envelope/1"}
            q = lambda a: "{http://schemas.dmtf.org/ovf/envelope/1}" + a
            root = ET.parse(sys.argv[1]).getroot()
            f = root.find("ovf:References/ovf:File", ns)
            d = root.find("ovf:DiskSection/ovf:Disk", ns)
            print(f.get(q("href")), f.get(q("size")), d.get(q("capacity")), d.get(q("fileRef")) == f.get(q("id")))
            for p in root.iter(q("Property")):
                print(p.get(q("key")), p.get(q("value")))
            """
        let read = try await ProgramRunner.run(
            "python3", ["-c", script, unpacked.appending(path: "web.ovf").path])
        let vmdkSize = try FileManager.default.attributesOfItem(atPath: vmdk.path)[.size] as? Int ?? 0
        #expect(read.hasPrefix("web-disk1.vmdk \(vmdkSize) \(64 << 20) True\n"), "\(read)")
        for key in ["instance-id", "hostname", "seedfrom", "public-keys", "password"] {
            #expect(read.contains("\n\(key) "), "\(key): \(read)")
        }
        let encoded = Data("#cloud-config\nhostname: from-ova\n".utf8).base64EncodedString()
        #expect(read.contains("\nuser-data \(encoded)\n"), "\(read)")

        // An existing output is kept unless --force; a failed export leaves nothing beside it.
        let again = try await scene.nimbus(["image", "export", "web", "--target", "vmware", "-o", ova.path])
        #expect(again.status == NimbusError.Code.alreadyExists.exitStatus, "\(again.standardError)")
        #expect(again.standardError.contains("--force"), "\(again.standardError)")
        let forced = try await scene.nimbus(["image", "export", "web", "--target", "vmware", "-o", ova.path, "--force"])
        #expect(forced.status == 0, "\(forced.standardError)")
        let left = try FileManager.default.contentsOfDirectory(atPath: scene.out("").path).filter { $0.hasPrefix(".") }
        #expect(left.isEmpty, "\(left)")
    }

    @Test("hyperv: a dynamic VHDX with the guest's bytes, and a NoCloud seed beside it from --cloud-init")
    func hyperv() async throws {
        let scene = try await Scene()
        defer { scene.home.remove() }
        try FileManager.default.createDirectory(at: scene.out(""), withIntermediateDirectories: true)
        let userData = scene.home.url.appending(path: "user-data")
        try Data("#cloud-config\nruncmd: [touch /run/hyperv]\n".utf8).write(to: userData)
        let vhdx = scene.out("web.vhdx")
        let result = try await scene.nimbus([
            "image", "export", "web", "--target", "hyperv", "-o", vhdx.path, "--cloud-init", userData.path,
            "--format", "json",
        ])
        #expect(result.status == 0, "\(result.standardError)")
        #expect(result.standardOutput.contains("web-seed.iso"), "\(result.standardOutput)")
        let info = try await scene.info(vhdx)
        #expect(info["format"] as? String == "vhdx")
        #expect(info["virtual-size"] as? Int == 64 << 20)
        #expect(try await ProgramRunner.output("qemu-img", ["check", vhdx.path]).status == 0)
        #expect(try await scene.sameBytes(vhdx, format: "vhdx"))
        try await scene.importsBack(vhdx, as: "vhdx")
        let seed = scene.out("web-seed.iso")
        if ProgramRunner.find("isoinfo") != nil {
            let listing = try await ProgramRunner.run("isoinfo", ["-R", "-f", "-i", seed.path])
            #expect(listing.contains("/user-data") && listing.contains("/meta-data"), "\(listing)")
        } else {
            print("ExportTests.hyperv: isoinfo is not installed (genisoimage): the seed's files were not listed")
        }

        // Bad user-data is refused before any disk is written.
        try Data("#cloud-config\nruncmd: [unclosed\n".utf8).write(to: userData)
        let bad = scene.out("bad.vhdx")
        let refused = try await scene.nimbus([
            "image", "export", "web", "--target", "hyperv", "-o", bad.path, "--cloud-init", userData.path,
        ])
        #expect(refused.status == NimbusError.Code.invalidArgument.exitStatus, "\(refused.standardError)")
        #expect(!FileManager.default.fileExists(atPath: bad.path))
    }

    @Test("openstack: a qcow2 (compat 1.1) and the Glance properties that fit, with the upload command")
    func openstack() async throws {
        let scene = try await Scene()
        defer { scene.home.remove() }
        try FileManager.default.createDirectory(at: scene.out(""), withIntermediateDirectories: true)
        let disk = scene.out("web.qcow2")
        let result = try await scene.nimbus(["image", "export", "web", "--target", "openstack", "-o", disk.path])
        #expect(result.status == 0, "\(result.standardError)")
        #expect(result.standardOutput.contains("openstack image create"), "\(result.standardOutput)")
        let info = try await scene.info(disk)
        let specific = (info["format-specific"] as? [String: Any])?["data"] as? [String: Any]
        #expect(specific?["compat"] as? String == "1.1", "\(info)")
        #expect(info["backing-filename"] == nil)
        #expect(try await scene.sameBytes(disk, format: "qcow2"))
        let glance = try #require(
            try JSONSerialization.jsonObject(with: Data(contentsOf: scene.out("web.glance.json"))) as? [String: Any])
        #expect(glance["disk_format"] as? String == "qcow2" && glance["container_format"] as? String == "bare")
        #expect(glance["min_disk"] as? Int == 1)
        let properties = glance["properties"] as? [String: String] ?? [:]
        #expect(properties["hw_disk_bus"] == "virtio")
        // The random bytes make no boot sector: not a BIOS disk.
        #expect(properties["hw_firmware_type"] == "uefi", "\(properties)")
        #expect(properties["hw_qemu_guest_agent"] == nil, "only a capture knows")
    }

    @Test("raw and qcow2; vagrant is refused without a vagrant user; a missing folder and an unknown image are named")
    func plainAndRefusals() async throws {
        let scene = try await Scene()
        defer { scene.home.remove() }
        try FileManager.default.createDirectory(at: scene.out(""), withIntermediateDirectories: true)
        let raw = scene.out("web.img")
        #expect(try await scene.nimbus(["image", "export", "web", "--target", "raw", "-o", raw.path]).status == 0)
        #expect(try await scene.info(raw)["format"] as? String == "raw")
        #expect(try await scene.sameBytes(raw, format: "raw"))
        let qcow2 = scene.out("web.qcow2")
        #expect(try await scene.nimbus(["image", "export", "web", "--target", "qcow2", "-o", qcow2.path]).status == 0)
        #expect(try await scene.sameBytes(qcow2, format: "qcow2"))

        let box = scene.out("web.box")
        let vagrant = try await scene.nimbus(["image", "export", "web", "--target", "vagrant", "-o", box.path])
        #expect(vagrant.status == NimbusError.Code.invalidArgument.exitStatus, "\(vagrant.standardError)")
        #expect(vagrant.standardError.contains("has no vagrant user"), "\(vagrant.standardError)")
        #expect(vagrant.standardError.contains("--vagrant"), "\(vagrant.standardError)")
        #expect(!FileManager.default.fileExists(atPath: box.path))

        let nowhere = try await scene.nimbus([
            "image", "export", "web", "--target", "raw", "-o", scene.out("missing/web.img").path,
        ])
        #expect(nowhere.status == NimbusError.Code.notFound.exitStatus, "\(nowhere.standardError)")
        #expect(nowhere.standardError.contains("is not a folder"), "\(nowhere.standardError)")
        let unknown = try await scene.nimbus(["image", "export", "nothing", "--target", "raw", "-o", raw.path])
        #expect(unknown.status == NimbusError.Code.notFound.exitStatus, "\(unknown.standardError)")
        let userDataElsewhere = try await scene.nimbus([
            "image", "export", "web", "--target", "raw", "-o", raw.path, "--cloud-init", "/etc/hostname",
        ])
        #expect(userDataElsewhere.status == 64, "\(userDataElsewhere.standardError)")
    }
}
