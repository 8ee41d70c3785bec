import Foundation
import NimbusCore
import NimbusTestSupport
import Testing

@testable import NimbusDisks

@Suite("Disk image headers and qemu-img", .requires(.programs("qemu-img")))
struct NimbusDisksTests {
    func qemuImg(_ arguments: String...) async throws {
        try await ProgramRunner.run("qemu-img", arguments)
    }

    @Test("qcow2 v3 (compat 1.1) and v2 (compat 0.10) headers give format, version and virtual size")
    func qcow2Versions() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let v3 = dir.url.appending(path: "v3.disk")
        let v2 = dir.url.appending(path: "v2.img")
        try await qemuImg("create", "-q", "-f", "qcow2", "-o", "compat=1.1", v3.path, "1G")
        try await qemuImg("create", "-q", "-f", "qcow2", "-o", "compat=0.10", v2.path, "300M")
        let info3 = try DiskImage.inspect(v3)
        #expect(info3.format == .qcow2)
        #expect(info3.qcow2Version == 3)
        #expect(info3.virtualSize == 1 << 30)
        #expect(info3.backingFile == nil)
        let info2 = try DiskImage.inspect(v2)
        #expect(info2.format == .qcow2)
        #expect(info2.qcow2Version == 2)
        #expect(info2.virtualSize == 300 << 20)
    }

    @Test("a raw image is raw whatever its extension, sized by its length")
    func raw() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let raw = dir.url.appending(path: "looks-like.qcow2")
        try await qemuImg("create", "-q", "-f", "raw", raw.path, "64M")
        let info = try DiskImage.inspect(raw)
        #expect(info.format == .raw)
        #expect(info.virtualSize == 64 << 20)
    }

    @Test("an overlay names its absolute base and the base's format, and qemu-img agrees")
    func overlay() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let base = dir.url.appending(path: "base.img")
        try await qemuImg("create", "-q", "-f", "qcow2", base.path, "256M")
        let overlay = dir.url.appending(path: "disk.qcow2")
        let info = try await DiskImage.createOverlay(at: overlay, backedBy: base, size: 1 << 30)
        #expect(info.format == .qcow2)
        #expect(info.backingFile == base.path)
        #expect(info.backingFormat == "qcow2")
        #expect(info.virtualSize == 1 << 30)
        #expect(info.backingPath(relativeTo: overlay)?.path == base.path)
        let json = try await ProgramRunner.run("qemu-img", ["info", "--output=json", overlay.path])
        #expect(json.contains("\"backing-filename-format\": \"qcow2\""))

        // A raw base is named raw, and an overlay without a size takes the base's.
        let rawBase = dir.url.appending(path: "raw-base")
        try await qemuImg("create", "-q", "-f", "raw", rawBase.path, "32M")
        let rawOverlay = dir.url.appending(path: "raw-overlay.qcow2")
        let rawInfo = try await DiskImage.createOverlay(at: rawOverlay, backedBy: rawBase)
        #expect(rawInfo.backingFormat == "raw")
        #expect(rawInfo.virtualSize == 32 << 20)
    }

    @Test("an overlay smaller than its base is refused with the limit named, and nothing is written")
    func overlayTooSmall() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let base = dir.url.appending(path: "base.img")
        try await qemuImg("create", "-q", "-f", "qcow2", base.path, "2G")
        let overlay = dir.url.appending(path: "disk.qcow2")
        let error = await #expect(throws: NimbusError.self) {
            try await DiskImage.createOverlay(at: overlay, backedBy: base, size: 1 << 30)
        }
        #expect(error?.code == .invalidArgument)
        #expect(error?.message.contains("1G is smaller than the image's virtual size 2G") == true)
        #expect(error?.cause as? DiskError == .sizeTooSmall(requested: 1 << 30, minimum: 2 << 30))
        #expect(!FileManager.default.fileExists(atPath: overlay.path))
    }

    @Test("resize grows an overlay and refuses to shrink it")
    func resize() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let base = dir.url.appending(path: "base.img")
        try await qemuImg("create", "-q", "-f", "qcow2", base.path, "128M")
        let overlay = dir.url.appending(path: "disk.qcow2")
        try await DiskImage.createOverlay(at: overlay, backedBy: base)
        let grown = try await DiskImage.resize(overlay, to: 512 << 20)
        #expect(grown.virtualSize == 512 << 20)
        #expect(grown.backingFile == base.path)
        let error = await #expect(throws: NimbusError.self) { try await DiskImage.resize(overlay, to: 64 << 20) }
        #expect(error?.message.contains("smaller than the current 512M") == true)
    }

    @Test("write turns raw into qcow2 in place of a temporary file")
    func convert() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let raw = dir.url.appending(path: "a.raw")
        try await qemuImg("create", "-q", "-f", "raw", raw.path, "16M")
        let out = dir.url.appending(path: "a.qcow2")
        try await DiskImage.write(raw, as: .qcow2, to: out)
        let info = try DiskImage.inspect(out)
        #expect(info.format == .qcow2)
        #expect(info.virtualSize == 16 << 20)
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir.url.path).sorted() == ["a.qcow2", "a.raw"])
    }

    @Test("xz-compressed and truncated qcow2 files are refused with the reason")
    func badHeaders() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let xz = dir.url.appending(path: "image.qcow2.xz")
        try Data([0xFD, 0x37, 0x7A, 0x58, 0x5A, 0x00, 0, 0]).write(to: xz)
        let error = #expect(throws: NimbusError.self) { try DiskImage.inspect(xz) }
        #expect(error?.message.contains("xz-compressed") == true)
        let short = dir.url.appending(path: "short")
        try Data([0x51, 0x46, 0x49, 0xFB, 0, 0, 0, 3]).write(to: short)
        let truncated = #expect(throws: NimbusError.self) { try DiskImage.inspect(short) }
        #expect(truncated?.cause as? DiskError == .truncatedHeader(path: short.path))
    }

    @Test("a backing-file offset near 2^64 is a malformed header, not an overflow (found by bench/fuzz)")
    func backingOffsetOverflow() throws {
        // qcow2 v2: magic, version 2, backing_file_offset 0xFFFFFFFFFFFFFFF8, backing_file_size 16.
        var header = [UInt8](repeating: 0, count: 72)
        header.replaceSubrange(0..<4, with: [0x51, 0x46, 0x49, 0xFB])
        header[7] = 2
        header.replaceSubrange(8..<16, with: [0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xF8])
        header[19] = 16
        #expect(throws: DiskError.malformedHeader(path: "fuzz", reason: "backing file name outside the file")) {
            try DiskImage.parse(header, fileSize: 72, path: "fuzz") { _, _ in nil }
        }
    }
}

@Suite("Whether a disk boots by BIOS", .requires(.programs("qemu-img", "sfdisk")))
struct BootSectorTests {
    /// A 64 MiB GPT disk with one ESP, as sfdisk writes it: a protective MBR with no boot code.
    func uefiOnlyDisk(in dir: TemporaryDirectory) async throws -> URL {
        let disk = dir.url.appending(path: "uefi.raw")
        try await ProgramRunner.run("qemu-img", ["create", "-q", "-f", "raw", disk.path, "64M"])
        try await ProgramRunner.run(
            "sh", ["-c", "printf 'label: gpt\\n,,U\\n' | sfdisk --quiet \"$0\"", disk.path])
        return disk
    }

    /// `disk` with code in its MBR's first 440 bytes, as GRUB's boot.img or SYSLINUX's gptmbr.bin put there.
    func addBootCode(to disk: URL) throws {
        let handle = try FileHandle(forWritingTo: disk)
        defer { try? handle.close() }
        try handle.write(contentsOf: Data([0x33, 0xC0, 0xFA, 0x8E, 0xD8, 0x8E, 0xD0, 0xBC, 0x00, 0x7C]))
    }

    @Test("a GPT disk whose protective MBR has no code is UEFI-only, raw and in qcow2")
    func uefiOnly() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let raw = try await uefiOnlyDisk(in: dir)
        let qcow2 = dir.url.appending(path: "uefi.qcow2")
        try await ProgramRunner.run("qemu-img", ["convert", "-q", "-c", "-O", "qcow2", raw.path, qcow2.path])
        #expect(try await DiskImage.bootsByBIOS(raw) == false)
        #expect(try await DiskImage.bootsByBIOS(qcow2) == false)
    }

    @Test("boot code before the 55 AA signature boots by BIOS, raw and in a compressed qcow2")
    func hybrid() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let raw = try await uefiOnlyDisk(in: dir)
        try addBootCode(to: raw)
        let qcow2 = dir.url.appending(path: "hybrid.qcow2")
        try await ProgramRunner.run("qemu-img", ["convert", "-q", "-c", "-O", "qcow2", raw.path, qcow2.path])
        #expect(try await DiskImage.bootsByBIOS(raw))
        #expect(try await DiskImage.bootsByBIOS(qcow2))
    }

    @Test("code without the signature, a blank disk and a short sector do not boot by BIOS")
    func notBootSectors() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let blank = dir.url.appending(path: "blank.raw")
        try await ProgramRunner.run("qemu-img", ["create", "-q", "-f", "raw", blank.path, "1M"])
        #expect(try await DiskImage.bootsByBIOS(blank) == false)
        try addBootCode(to: blank)
        #expect(try await DiskImage.bootsByBIOS(blank) == false)
        #expect(DiskImage.isBIOSBootSector(Data(repeating: 0x55, count: 300)) == false)
    }

    @Test("the test guest image boots both ways, as published cloud images do", .requires(.guestImage))
    func guestImage() async throws {
        #expect(try await DiskImage.bootsByBIOS(try #require(Prerequisites.guestImage)))
    }
}
