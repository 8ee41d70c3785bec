import Foundation
import NimbusCore

extension DiskImage {
    /// Creates a qcow2 overlay at `overlay` backed by `base`, optionally larger than the base.
    ///
    /// The backing file is written as an absolute path and its format is named (`-F`), because QEMU
    /// refuses to probe a backing format since 6.1 (probing a raw backing file is a security hole: a guest
    /// could write a qcow2 header into it). A `size` below the base's virtual size is refused before
    /// anything is written, since shrinking would cut off the base's partitions.
    @discardableResult
    public static func createOverlay(at overlay: URL, backedBy base: URL, size: UInt64? = nil) async throws(NimbusError)
        -> DiskInfo
    {
        let baseInfo = try inspect(base)
        if let size, size < baseInfo.virtualSize {
            let error = DiskError.sizeTooSmall(requested: size, minimum: baseInfo.virtualSize)
            throw NimbusError(
                .invalidArgument,
                "disk size \(ByteSize(bytes: size)) is smaller than the image's virtual size "
                    + "\(ByteSize(bytes: baseInfo.virtualSize)) (\(baseInfo.virtualSize) bytes): "
                    + "ask for at least \(ByteSize(bytes: baseInfo.virtualSize).humanReadable)",
                cause: error)
        }
        let qemuImg = try ProgramRunner.require("qemu-img", package: "qemu-utils")
        let absoluteBase = base.standardizedFileURL.path
        var arguments = [
            "create", "-q", "-f", "qcow2", "-b", absoluteBase, "-F", baseInfo.format.rawValue, overlay.path,
        ]
        if let size { arguments.append(String(size)) }
        try await runQemuImg(qemuImg, arguments, writing: overlay, action: "create the overlay")
        return try inspect(overlay)
    }

    /// Runs qemu-img, which writes `file`: a full filesystem is told as such (`DiskSpace.full`), not as
    /// qemu-img's errno text.
    static func runQemuImg(_ qemuImg: String, _ arguments: [String], writing file: URL, action: String)
        async throws(NimbusError)
    {
        do {
            try await ProgramRunner.run(qemuImg, arguments)
        } catch {
            throw DiskSpace.isFull(error) ? DiskSpace.full(file, action: action) : error
        }
    }

    /// Grows `image` to `size` bytes. Shrinking is refused with the current size named.
    @discardableResult
    public static func resize(_ image: URL, to size: UInt64) async throws(NimbusError) -> DiskInfo {
        let info = try inspect(image)
        if size < info.virtualSize {
            throw NimbusError(
                .invalidArgument,
                "disk size \(ByteSize(bytes: size)) is smaller than the current \(ByteSize(bytes: info.virtualSize)) "
                    + "(\(info.virtualSize) bytes) of \(image.path): disks only grow; ask for at least that",
                cause: DiskError.sizeTooSmall(requested: size, minimum: info.virtualSize))
        }
        guard size > info.virtualSize else { return info }
        let qemuImg = try ProgramRunner.require("qemu-img", package: "qemu-utils")
        try await ProgramRunner.run(qemuImg, ["resize", "-q", "-f", info.format.rawValue, image.path, String(size)])
        return try inspect(image)
    }
}
