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
            needed = try await measure(source, format: sourceFormat, as: format == .raw ? .raw : .qcow2)
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
            throw DiskSpace.isFull(error)
                ? DiskSpace.full(destination, action: "write the \(format) disk", needed: needed) : error
        }
        guard rename(temporary.path, destination.path) == 0 else {
            let error = posixFailure("rename into place", destination)
            try? FileManager.default.removeItem(at: temporary)
            throw error
        }
    }

    /// Refuses another hypervisor's disk that reads other files: a backing or parent disk (a VHDX or VMDK
    /// differencing disk), or a VMDK whose extents are elsewhere (a descriptor can name any file on the host,
    /// and a conversion would copy it into the image). Asked of qemu-img, which reads these formats.
    public static func requireSelfContained(_ file: URL, format: String) async throws(NimbusError) {
        let fix = "convert it to one file first, e.g. `qemu-img convert -O qcow2 DISK standalone.qcow2`"
        let head = (try? FileHandle(forReadingFrom: file).read(upToCount: 32)).map { Array($0) } ?? []
        if head.starts(with: Array("# Disk DescriptorFile".utf8)) {
            throw NimbusError(
                .invalidArgument, "\(file.path) is a VMDK descriptor, whose data lives in the files it names: \(fix)")
        }
        let qemuImg = try ProgramRunner.require("qemu-img", package: "qemu-utils")
        let text = try await ProgramRunner.run(qemuImg, ["info", "--output=json", "-f", format, file.path])
        guard let info = try? JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any] else {
            throw NimbusError(.invalidArgument, "qemu-img cannot read \(file.path) as \(format)")
        }
        if let backing = info["backing-filename"] as? String {
            throw NimbusError(.invalidArgument, "\(file.path) is a differencing disk on \(backing): \(fix)")
        }
        let data = (info["format-specific"] as? [String: Any])?["data"] as? [String: Any]
        let own = file.standardizedFileURL.resolvingSymlinksInPath().path
        for case let extent as [String: Any] in data?["extents"] as? [Any] ?? [] {
            let name = URL(fileURLWithPath: extent["filename"] as? String ?? "").resolvingSymlinksInPath().path
            guard name == own else {
                throw NimbusError(.invalidArgument, "\(file.path) keeps its data in \(name): \(fix)")
            }
        }
    }

    /// The foreign format (`vmdk`, `vhdx`, ...) an `inspect` error names, if that is why it failed.
    public static func foreignFormat(of error: NimbusError) -> String? {
        guard case .foreignFormat(_, let format)? = error.cause as? DiskError else { return nil }
        return format
    }

    /// What qemu-img says a conversion of `file` to `output` (raw or qcow2) needs; nil when it cannot say.
    static func measure(_ file: URL, format: String, as output: PortableDiskFormat) async throws(NimbusError) -> UInt64?
    {
        let qemuImg = try ProgramRunner.require("qemu-img", package: "qemu-utils")
        let result = try await ProgramRunner.output(
            qemuImg, ["measure", "--output=json", "-f", format, "-O", output.rawValue, file.path])
        guard result.status == 0,
            let json = try? JSONSerialization.jsonObject(with: Data(result.standardOutput.utf8)) as? [String: Any]
        else { return nil }
        return (json["required"] as? NSNumber)?.uint64Value
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
