import Foundation
import NimbusCore

/// A disk format another platform imports, as qemu-img writes it.
public enum PortableDiskFormat: String, Sendable, CaseIterable, CustomStringConvertible {
    /// qcow2 version 3 (`compat=1.1`), what OpenStack's Glance and libvirt take.
    case qcow2
    /// A plain image, as large as the disk the guest sees.
    case raw
    /// VMware's streamOptimized VMDK (compressed grains): the subformat an OVF package carries.
    case vmdk
    /// Hyper-V's VHDX, dynamically allocated.
    case vhdx

    public var description: String { rawValue }

    /// qemu-img's output options: format, then creation options.
    var qemuImgArguments: [String] {
        switch self {
        case .qcow2: ["-O", "qcow2", "-o", "compat=1.1"]
        case .raw: ["-O", "raw"]
        case .vmdk: ["-O", "vmdk", "-o", "subformat=streamOptimized"]
        case .vhdx: ["-O", "vhdx", "-o", "subformat=dynamic"]
        }
    }
}

extension DiskImage {
    /// Writes the disk `source` shows its guest (its backing chain merged in) as one standalone file in
    /// `format` at `destination`, through a hidden file beside it renamed into place: a failure leaves
    /// neither a partial file nor the one that was there. `compressed` compresses a qcow2's clusters, as
    /// cloud images are published. `progress` gets qemu-img's percentage (0-100) as it copies.
    public static func write(
        _ source: URL, as format: PortableDiskFormat, compressed: Bool = false, to destination: URL,
        progress: @escaping @Sendable (Double) -> Void = { _ in }
    ) async throws(NimbusError) {
        let qemuImg = try ProgramRunner.require("qemu-img", package: "qemu-utils")
        // What the file will need at most: every byte the guest sees for raw, the allocated bytes otherwise
        // (the chain's sum is what a merge can reach). Another hypervisor's disk is read by qemu-img as it is;
        // its file size is the estimate.
        var sourceFormat: String
        var needed: UInt64?
        do {
            let info = try inspect(source)
            sourceFormat = info.format.rawValue
            needed = format == .raw ? info.virtualSize : try allocatedBytes(of: source, info: info)
        } catch let error where foreignFormat(of: error) != nil {
            sourceFormat = foreignFormat(of: error) ?? ""
            needed = format == .raw ? nil : fileSize(source)
        }
        if let needed { try DiskSpace.require(needed, at: destination, for: "the \(format) disk") }
        let temporary = destination.deletingLastPathComponent()
            .appending(path: ".\(destination.lastPathComponent).\(getpid()).partial")
        var arguments = ["convert", "-p", "-f", sourceFormat] + format.qemuImgArguments
        if compressed && format == .qcow2 { arguments.append("-c") }
        arguments += [source.path, temporary.path]
        do {
            try await ProgramRunner.run(qemuImg, arguments) { text in
                // "    (42.00/100%)\r": the last figure of each piece.
                for piece in text.split(whereSeparator: { $0 == "\r" || $0 == "\n" }) {
                    let figure = piece.trimmingCharacters(in: .whitespaces).dropFirst().prefix { $0 != "/" }
                    if let percent = Double(figure) { progress(percent) }
                }
            }
        } catch {
            try? FileManager.default.removeItem(at: temporary)
            let text = error.message + (error.cause.map { " \($0)" } ?? "")
            if text.contains("No space left on device") || text.contains("Disk quota exceeded") {
                throw DiskSpace.full(destination, action: "write the \(format) disk", needed: needed)
            }
            throw error
        }
        guard rename(temporary.path, destination.path) == 0 else {
            let error = posixFailure("rename into place", destination)
            try? FileManager.default.removeItem(at: temporary)
            throw error
        }
    }

    /// The foreign format (`vmdk`, `vhdx`, ...) an `inspect` error names, if that is why it failed.
    public static func foreignFormat(of error: NimbusError) -> String? {
        guard case .foreignFormat(_, let format)? = error.cause as? DiskError else { return nil }
        return format
    }

    static func fileSize(_ file: URL) -> UInt64? {
        var status = stat()
        return stat(file.path, &status) == 0 ? UInt64(status.st_size) : nil
    }

    /// The bytes a chain of disks holds, backing files included: the most a merge of it can write.
    static func allocatedBytes(of disk: URL, info: DiskInfo) throws(NimbusError) -> UInt64 {
        var total = info.fileSize
        var (current, file) = (info, disk.standardizedFileURL)
        var seen: Set<String> = [file.path]
        while let backing = current.backingPath(relativeTo: file), seen.insert(backing.path).inserted {
            (current, file) = (try inspect(backing), backing)
            total += current.fileSize
        }
        return total
    }
}
