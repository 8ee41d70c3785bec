import Foundation
import NimbusCore

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// The on-disk formats Nimbus recognises, told apart by their magic bytes and never by a file's extension.
public enum DiskFormat: String, Sendable, Codable, CaseIterable, CustomStringConvertible {
    /// QEMU copy-on-write v2 or v3.
    case qcow2
    /// A plain image: whatever has no recognised magic.
    case raw

    /// The name qemu-img and QEMU's `-drive format=` use.
    public var description: String { rawValue }
}

/// What a disk image's header says.
public struct DiskInfo: Sendable, Equatable, Codable {
    /// The format found by magic bytes.
    public var format: DiskFormat
    /// The size the guest sees, in bytes (for raw: the file's size).
    public var virtualSize: UInt64
    /// The qcow2 header version (2 or 3); nil for raw.
    public var qcow2Version: UInt32?
    /// The backing file named in a qcow2 header, as written there (absolute or relative to the overlay).
    public var backingFile: String?
    /// The backing file's format, from the qcow2 backing-format header extension.
    public var backingFormat: String?
    /// The file's size on disk (allocated length, not blocks).
    public var fileSize: UInt64

    /// Header facts as read.
    public init(
        format: DiskFormat, virtualSize: UInt64, qcow2Version: UInt32? = nil, backingFile: String? = nil,
        backingFormat: String? = nil, fileSize: UInt64
    ) {
        self.format = format
        self.virtualSize = virtualSize
        self.qcow2Version = qcow2Version
        self.backingFile = backingFile
        self.backingFormat = backingFormat
        self.fileSize = fileSize
    }

    /// The backing file as an absolute path, resolving a relative name against the overlay's folder as
    /// QEMU does.
    public func backingPath(relativeTo overlay: URL) -> URL? {
        guard let backingFile, !backingFile.isEmpty else { return nil }
        if backingFile.hasPrefix("/") { return URL(fileURLWithPath: backingFile) }
        return overlay.deletingLastPathComponent().appending(path: backingFile).standardizedFileURL
    }
}

/// The precise failures of this module; wrapped as the cause of a `NimbusError`.
public enum DiskError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The file ended inside the header.
    case truncatedHeader(path: String)
    /// A qcow2 header with a version Nimbus does not read.
    case unsupportedVersion(path: String, version: UInt32)
    /// A header field points outside the file or is implausible.
    case malformedHeader(path: String, reason: String)
    /// The file is compressed (xz, gzip, zstd, bzip2) and must be decompressed first.
    case compressed(path: String, kind: String)
    /// The file is another hypervisor's disk format (qemu-img's name: `vmdk`, `vhdx`, `vdi`, `vpc`), which
    /// must be converted before it backs an overlay (`nimbus image import` converts it).
    case foreignFormat(path: String, format: String)
    /// The requested size is smaller than the base image's virtual size.
    case sizeTooSmall(requested: UInt64, minimum: UInt64)

    public var description: String {
        switch self {
        case .truncatedHeader(let path): "\(path) ends inside its image header"
        case .unsupportedVersion(let path, let version): "\(path) is qcow2 version \(version); only 2 and 3 are read"
        case .malformedHeader(let path, let reason): "\(path) has a malformed qcow2 header: \(reason)"
        case .compressed(let path, let kind): "\(path) is \(kind)-compressed, not a disk image"
        case .foreignFormat(let path, let format):
            "\(path) is a \(format) disk, not qcow2 or raw: `nimbus image import` converts it to qcow2"
        case .sizeTooSmall(let requested, let minimum):
            "\(ByteSize(bytes: requested)) is smaller than the base image's \(ByteSize(bytes: minimum))"
        }
    }
}

/// Reads disk image headers in Swift and creates, grows and converts images with `qemu-img`.
///
/// The qcow2 layout follows QEMU's docs/interop/qcow2.txt: a big-endian header (72 bytes in v2,
/// `header_length` bytes in v3), then header extensions (type, length, data padded to 8 bytes) up to an
/// end marker, then the backing file name at `backing_file_offset`.
public enum DiskImage {
    static let qcow2Magic: [UInt8] = [0x51, 0x46, 0x49, 0xFB]  // "QFI\xfb"
    static let backingFormatExtension: UInt32 = 0xE279_2ACA
    static let endOfExtensions: UInt32 = 0

    /// Reads the header of `url` and says what it is.
    public static func inspect(_ url: URL) throws(NimbusError) -> DiskInfo {
        let fd = open(url.path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw posixFailure("open the disk image", url) }
        defer { close(fd) }
        var status = stat()
        guard fstat(fd, &status) == 0 else { throw posixFailure("stat", url) }
        let fileSize = UInt64(status.st_size)
        // 64 KiB holds any header, its extensions and a backing name (<= 1023 bytes) in practice.
        var head = [UInt8](repeating: 0, count: Int(min(fileSize, 65536)))
        let count = head.withUnsafeMutableBytes { pread(fd, $0.baseAddress, $0.count, 0) }
        guard count >= 0 else { throw posixFailure("read", url) }
        head = Array(head.prefix(count))
        do {
            return try parse(
                head, fileSize: fileSize, path: url.path,
                readAt: { offset, length in
                    var buffer = [UInt8](repeating: 0, count: length)
                    let n = buffer.withUnsafeMutableBytes { pread(fd, $0.baseAddress, length, off_t(offset)) }
                    return n == length ? buffer : nil
                })
        } catch {
            throw NimbusError(.invalidArgument, "\(error): it cannot be used as a disk image", cause: error)
        }
    }

    /// Parses a header already read; `readAt` fetches bytes beyond `head` (a backing name far away).
    static func parse(
        _ head: [UInt8], fileSize: UInt64, path: String, readAt: (UInt64, Int) -> [UInt8]?
    ) throws(DiskError) -> DiskInfo {
        if let kind = compression(of: head) { throw .compressed(path: path, kind: kind) }
        if let format = foreignFormat(of: head) { throw .foreignFormat(path: path, format: format) }
        guard head.count >= 4, Array(head[0..<4]) == qcow2Magic else {
            return DiskInfo(format: .raw, virtualSize: fileSize, fileSize: fileSize)
        }
        guard head.count >= 72 else { throw .truncatedHeader(path: path) }
        let version = be32(head, 4)
        guard version == 2 || version == 3 else { throw .unsupportedVersion(path: path, version: version) }
        let backingOffset = be64(head, 8)
        let backingSize = be32(head, 16)
        let virtualSize = be64(head, 24)
        var headerLength = 72
        if version == 3 {
            guard head.count >= 104 else { throw .truncatedHeader(path: path) }
            headerLength = Int(be32(head, 100))
            guard headerLength >= 104, headerLength <= head.count else {
                throw .malformedHeader(path: path, reason: "header_length \(headerLength)")
            }
        }
        var backingFormat: String?
        var offset = headerLength
        while offset + 8 <= head.count {
            let type = be32(head, offset)
            let length = Int(be32(head, offset + 4))
            if type == endOfExtensions { break }
            let dataStart = offset + 8
            guard dataStart + length <= head.count else {
                throw .malformedHeader(path: path, reason: "header extension 0x\(String(type, radix: 16)) overruns")
            }
            if type == backingFormatExtension {
                backingFormat = String(decoding: head[dataStart..<dataStart + length], as: UTF8.self)
            }
            offset = dataStart + (length + 7) / 8 * 8
        }
        var backingFile: String?
        if backingOffset != 0, backingSize > 0 {
            // Compared without adding: an offset near 2^64 would overflow.
            guard backingSize <= 1023, backingOffset <= fileSize, UInt64(backingSize) <= fileSize - backingOffset else {
                throw .malformedHeader(path: path, reason: "backing file name outside the file")
            }
            let bytes: [UInt8]? =
                backingOffset + UInt64(backingSize) <= UInt64(head.count)
                ? Array(head[Int(backingOffset)..<Int(backingOffset) + Int(backingSize)])
                : readAt(backingOffset, Int(backingSize))
            guard let bytes else { throw .truncatedHeader(path: path) }
            backingFile = String(decoding: bytes, as: UTF8.self)
        }
        return DiskInfo(
            format: .qcow2, virtualSize: virtualSize, qcow2Version: version, backingFile: backingFile,
            backingFormat: backingFormat, fileSize: fileSize)
    }

    /// Recognises compressed files so that a `.qcow2.xz` is refused with a clear reason.
    static func compression(of head: [UInt8]) -> String? {
        let signatures: [(String, [UInt8])] = [
            ("xz", [0xFD, 0x37, 0x7A, 0x58, 0x5A, 0x00]), ("gzip", [0x1F, 0x8B]),
            ("zstd", [0x28, 0xB5, 0x2F, 0xFD]), ("bzip2", [0x42, 0x5A, 0x68]),
        ]
        return signatures.first { head.starts(with: $0.1) }?.0
    }

    /// Other hypervisors' formats by their signatures, named as qemu-img names them: VMware's sparse and
    /// streamOptimized VMDK (`KDMV`) and a VMDK descriptor, Hyper-V's VHDX (`vhdxfile`), VirtualBox's VDI
    /// (0xBEDA107F at 0x40), and a dynamic VHD (`conectix`). A fixed VHD is raw data with a footer at its end,
    /// which reads as raw, as it is.
    public static func foreignFormat(of head: [UInt8]) -> String? {
        if head.starts(with: Array("KDMV".utf8)) || head.starts(with: Array("# Disk DescriptorFile".utf8)) {
            return "vmdk"
        }
        if head.starts(with: Array("vhdxfile".utf8)) { return "vhdx" }
        if head.starts(with: Array("conectix".utf8)) { return "vpc" }
        if head.count >= 0x44, Array(head[0x40..<0x44]) == [0x7F, 0x10, 0xDA, 0xBE] { return "vdi" }
        return nil
    }

    static func be32(_ bytes: [UInt8], _ at: Int) -> UInt32 {
        bytes[at..<at + 4].reduce(0) { $0 << 8 | UInt32($1) }
    }

    static func be64(_ bytes: [UInt8], _ at: Int) -> UInt64 {
        bytes[at..<at + 8].reduce(0) { $0 << 8 | UInt64($1) }
    }
}
