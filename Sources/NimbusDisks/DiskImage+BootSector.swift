import Foundation
import NimbusCore

extension DiskImage {
    /// Whether the disk `image` holds can boot by BIOS: its first sector (as the guest sees it, read through
    /// qemu-img for qcow2) is a boot sector with code in it.
    ///
    /// A BIOS runs the 440 bytes of code before the MBR's disk signature when the sector ends in 55 AA.
    /// GRUB's boot.img (Ubuntu's and Debian's cloud images, Fedora CoreOS) and SYSLINUX's gptmbr.bin put code
    /// there; a UEFI-only disk's protective MBR (sfdisk, sgdisk, systemd-repart) leaves it zero.
    public static func bootsByBIOS(_ image: URL) async throws(NimbusError) -> Bool {
        let info = try inspect(image)
        let sector: Data
        switch info.format {
        case .raw:
            sector = try readFirstSector(of: image)
        case .qcow2:
            let qemuImg = try ProgramRunner.require("qemu-img", package: "qemu-utils")
            let copy = FileManager.default.temporaryDirectory
                .appending(path: "nimbus-boot-sector-\(getpid())-\(UInt32.random(in: 0...UInt32.max))")
            defer { try? FileManager.default.removeItem(at: copy) }
            try await ProgramRunner.run(
                qemuImg, ["dd", "-f", "qcow2", "-O", "raw", "bs=512", "count=1", "if=\(image.path)", "of=\(copy.path)"])
            sector = try readFirstSector(of: copy)
        }
        return isBIOSBootSector(sector)
    }

    /// Whether `sector` (a disk's first 512 bytes) is a boot sector with code: signature 55 AA at byte 510
    /// and not all zeros in the code area (bytes 0-439).
    public static func isBIOSBootSector(_ sector: Data) -> Bool {
        guard sector.count >= 512 else { return false }
        let bytes = [UInt8](sector.prefix(512))
        return bytes[510] == 0x55 && bytes[511] == 0xAA && bytes[0..<440].contains { $0 != 0 }
    }

    private static func readFirstSector(of file: URL) throws(NimbusError) -> Data {
        do {
            let handle = try FileHandle(forReadingFrom: file)
            defer { try? handle.close() }
            return try handle.read(upToCount: 512) ?? Data()
        } catch {
            throw NimbusError(.io, "cannot read the first sector of \(file.path): \(error.localizedDescription)")
        }
    }
}
