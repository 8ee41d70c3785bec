import CLibvirt
import Crypto
import Foundation
import NimbusCore
import NimbusMachines

/// A storage volume handle (`virStorageVolPtr`), freed when released.
///
/// `@unchecked Sendable` for the same reason as `LibvirtPool`.
final class LibvirtVolume: @unchecked Sendable {
    let pointer: virStorageVolPtr
    let pool: LibvirtPool
    let name: String

    init(_ pointer: virStorageVolPtr, pool: LibvirtPool, name: String) {
        self.pointer = pointer
        self.pool = pool
        self.name = name
    }

    deinit { _ = libvirt.virStorageVolFree(pointer) }

    var uri: String { pool.connection.uri }

    /// lseek's SEEK_DATA and SEEK_HOLE (Linux, <unistd.h> with _GNU_SOURCE, which Glibc's module leaves out).
    static let seekData: Int32 = 3
    static let seekHole: Int32 = 4

    /// The volume's file on the daemon's host.
    func path() throws(NimbusError) -> String {
        guard let text = libvirt.virStorageVolGetPath(pointer) else {
            let error = LibvirtError.last("virStorageVolGetPath")
            throw NimbusError(
                .processFailed, "libvirt at \(uri) gave no path for volume \(name): \(error.message)", cause: error)
        }
        defer { free(text) }
        return String(cString: text)
    }

    /// The bytes the volume takes on its host (its file's allocated blocks for a directory pool), as libvirt
    /// reads them now.
    func allocation() throws(NimbusError) -> UInt64 {
        var info = virStorageVolInfo()
        guard libvirt.virStorageVolGetInfo(pointer, &info) == 0 else {
            let error = LibvirtError.last("virStorageVolGetInfo")
            throw NimbusError(
                .processFailed, "libvirt at \(uri) could not read the size of volume \(name): \(error.message)",
                cause: error)
        }
        return info.allocation
    }

    /// Grows the volume to `bytes` (qemu-img resize on its host for a qcow2).
    func resize(to bytes: UInt64) throws(NimbusError) {
        guard libvirt.virStorageVolResize(pointer, bytes, 0) == 0 else {
            let error = LibvirtError.last("virStorageVolResize")
            throw NimbusError(
                .processFailed,
                "libvirt at \(uri) could not resize volume \(name) in pool \(pool.name): \(error.message)",
                cause: error)
        }
    }

    func delete() throws(NimbusError) {
        guard libvirt.virStorageVolDelete(pointer, 0) == 0 else {
            let error = LibvirtError.last("virStorageVolDelete")
            throw NimbusError(
                .processFailed,
                "libvirt at \(uri) could not delete volume \(name) from pool \(pool.name): \(error.message)",
                cause: error)
        }
    }

    private func failure(_ what: String, _ function: String, _ stream: virStreamPtr) -> NimbusError {
        let error = LibvirtError.last(function)
        _ = libvirt.virStreamAbort(stream)
        libvirt.virResetLastError()
        return NimbusError(
            .processFailed, "\(what) volume \(name) in pool \(pool.name) at \(uri) failed: \(error.message)",
            cause: error)
    }

    /// Sends `file` into the volume through a libvirt stream (`virStorageVolUpload`). Sparse: holes travel as
    /// hole lengths (`virStreamSendHole`), not as zeros. Returns the SHA-256 of what was sent when `hashing`.
    /// Blocks: call it from `LibvirtStorage.offload`.
    func upload(_ file: URL, sparse: Bool, hashing: Bool) throws(NimbusError) -> String? {
        let fd = open(file.path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else {
            throw NimbusError(.notFound, "cannot read \(file.path): \(String(cString: strerror(errno)))")
        }
        defer { close(fd) }
        let size = Int64(try LibvirtStorage.fileSize(file))
        guard let stream = libvirt.virStreamNew(pool.connection.pointer, 0) else {
            let error = LibvirtError.last("virStreamNew")
            throw NimbusError(
                .processFailed, "libvirt at \(uri) could not open a stream: \(error.message)", cause: error)
        }
        defer { _ = libvirt.virStreamFree(stream) }
        let flags = sparse ? UInt32(VIR_STORAGE_VOL_UPLOAD_SPARSE_STREAM.rawValue) : 0
        guard libvirt.virStorageVolUpload(pointer, stream, 0, UInt64(size), flags) == 0 else {
            throw failure("uploading \(file.lastPathComponent) into", "virStorageVolUpload", stream)
        }
        var hasher = hashing ? SHA256() : nil
        var buffer = [UInt8](repeating: 0, count: 1 << 20)
        var offset: Int64 = 0
        while offset < size {
            var end = size
            if sparse {
                let data = lseek(fd, off_t(offset), Self.seekData)
                let dataStart = data < 0 ? size : Int64(data)
                if dataStart > offset {
                    guard libvirt.virStreamSendHole(stream, dataStart - offset, 0) == 0 else {
                        throw failure("uploading \(file.lastPathComponent) into", "virStreamSendHole", stream)
                    }
                    offset = dataStart
                    continue
                }
                let hole = lseek(fd, off_t(offset), Self.seekHole)
                end = hole < 0 ? size : min(size, Int64(hole))
            }
            while offset < end {
                let want = Int(min(Int64(buffer.count), end - offset))
                let count = buffer.withUnsafeMutableBytes { pread(fd, $0.baseAddress, want, off_t(offset)) }
                guard count > 0 else {
                    _ = libvirt.virStreamAbort(stream)
                    throw NimbusError(
                        .io, "reading \(file.path) failed at byte \(offset): \(String(cString: strerror(errno)))")
                }
                if hashing { hasher?.update(data: buffer[0..<count]) }
                var sent = 0
                while sent < count {
                    let result = buffer.withUnsafeBytes { bytes in
                        libvirt.virStreamSend(
                            stream, bytes.baseAddress?.advanced(by: sent).assumingMemoryBound(to: CChar.self),
                            count - sent)
                    }
                    guard result > 0 else {
                        throw failure("uploading \(file.lastPathComponent) into", "virStreamSend", stream)
                    }
                    sent += Int(result)
                }
                offset += Int64(count)
            }
        }
        guard libvirt.virStreamFinish(stream) == 0 else {
            throw failure("finishing the upload of \(file.lastPathComponent) into", "virStreamFinish", stream)
        }
        return hasher.map { LibvirtStorage.hex($0.finalize()) }
    }

    /// Reads the first `size` bytes of the volume back through a stream (`virStorageVolDownload`) and
    /// returns their SHA-256. Blocks: call it from `LibvirtStorage.offload`.
    func downloadDigest(size: UInt64) throws(NimbusError) -> String {
        guard let stream = libvirt.virStreamNew(pool.connection.pointer, 0) else {
            let error = LibvirtError.last("virStreamNew")
            throw NimbusError(
                .processFailed, "libvirt at \(uri) could not open a stream: \(error.message)", cause: error)
        }
        defer { _ = libvirt.virStreamFree(stream) }
        guard libvirt.virStorageVolDownload(pointer, stream, 0, size, 0) == 0 else {
            throw failure("reading back", "virStorageVolDownload", stream)
        }
        var hasher = SHA256()
        var buffer = [UInt8](repeating: 0, count: 1 << 20)
        var received: UInt64 = 0
        while true {
            let count = buffer.withUnsafeMutableBytes { bytes in
                libvirt.virStreamRecv(stream, bytes.baseAddress?.assumingMemoryBound(to: CChar.self), bytes.count)
            }
            if count == 0 { break }
            guard count > 0 else { throw failure("reading back", "virStreamRecv", stream) }
            hasher.update(data: buffer[0..<Int(count)])
            received += UInt64(count)
        }
        guard libvirt.virStreamFinish(stream) == 0 else { throw failure("reading back", "virStreamFinish", stream) }
        guard received == size else {
            throw NimbusError(
                .integrity, "volume \(name) in pool \(pool.name) at \(uri) holds \(received) bytes, \(size) were sent")
        }
        return LibvirtStorage.hex(hasher.finalize())
    }
}
