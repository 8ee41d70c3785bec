import Foundation
import NimbusCore

/// The serial console log's size cap and rotation.
///
/// QEMU logs the console chardev to a file (`logfile=`), which it cannot cap or rotate, and there is
/// no daemon to read a pipe. So Nimbus does it at the two moments it runs: at start the last boot's log
/// becomes `serial.log.1` (one generation kept), and at stop the log is cut to its last `limit` bytes.
/// While a machine runs, its log grows unbounded; a guest console is quiet after boot.
public enum SerialLog {
    /// Moves the current log aside before a boot, keeping it cut to `limit`.
    public static func rotate(_ directory: MachineDirectory, limit: ByteSize) {
        let manager = FileManager.default
        guard manager.fileExists(atPath: directory.serialLog.path) else { return }
        trim(directory.serialLog, limit: limit)
        try? manager.removeItem(at: directory.previousSerialLog)
        try? manager.moveItem(at: directory.serialLog, to: directory.previousSerialLog)
    }

    /// Cuts `file` to its last `limit` bytes, atomically.
    public static func trim(_ file: URL, limit: ByteSize) {
        guard let handle = try? FileHandle(forReadingFrom: file) else { return }
        defer { try? handle.close() }
        guard let size = try? handle.seekToEnd(), size > limit.bytes else { return }
        do {
            try handle.seek(toOffset: size - limit.bytes)
            let tail = try handle.readToEnd() ?? Data()
            try AtomicFile.write(tail, to: file, permissions: 0o600)
        } catch {
            return
        }
    }

    /// Bytes of a log read from an offset, and where the next read starts.
    public struct Chunk: Sendable, Equatable {
        public var data: Data
        public var next: UInt64

        public init(data: Data, next: UInt64) {
            self.data = data
            self.next = next
        }
    }

    /// What `file` holds from `offset` on; from its start when it is shorter than `offset` (rotated since the
    /// last read); nil when it does not exist.
    public static func read(_ file: URL, from offset: UInt64) throws(NimbusError) -> Chunk? {
        guard let handle = try? FileHandle(forReadingFrom: file) else {
            guard FileManager.default.fileExists(atPath: file.path) else { return nil }
            throw NimbusError(.io, "cannot read \(file.path): check its permissions")
        }
        defer { try? handle.close() }
        do {
            let size = try handle.seekToEnd()
            let start = size < offset ? 0 : offset
            try handle.seek(toOffset: start)
            let data = try handle.readToEnd() ?? Data()
            return Chunk(data: data, next: start + UInt64(data.count))
        } catch {
            throw NimbusError(.io, "cannot read \(file.path): \(error.localizedDescription)", cause: error)
        }
    }
}
