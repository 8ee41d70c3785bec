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
}
