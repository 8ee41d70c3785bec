// fuzz-qcow2: DiskImage.parse, the qcow2 header reader, on arbitrary bytes.
//
// The input is the whole file: `head` is its first 64 KiB (as DiskImage.inspect reads it), `readAt` serves any
// range of it (nil past its end, as a short pread), and the file's size is the input's size. Trailers, last
// first, change that: "SIZE" + a big-endian UInt32 claims that file size (larger than the bytes given: a backing
// name beyond them), "HEAD" + a big-endian UInt32 cuts `head` to that many bytes (so that `readAt` is asked for
// a backing name beyond the head without a 64 KiB input). Throwing is fine; a trap (overflow, out-of-bounds
// slice) is a bug.

import FuzzDriver

@testable import NimbusDisks

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    var bytes = Array(UnsafeBufferPointer(start: data, count: size))
    func trailer(_ tag: String) -> UInt64? {
        guard bytes.count >= 8, Array(bytes[(bytes.count - 8)..<(bytes.count - 4)]) == Array(tag.utf8) else {
            return nil
        }
        defer { bytes.removeLast(8) }
        return bytes[(bytes.count - 4)...].reduce(0) { $0 << 8 | UInt64($1) }
    }
    let claimedSize = trailer("SIZE")
    let headLength = trailer("HEAD").map { Int($0) } ?? 65536
    let file = bytes
    let fileSize = claimedSize ?? UInt64(file.count)
    let head = Array(file.prefix(min(headLength, 65536)))
    let info = try? DiskImage.parse(
        head, fileSize: fileSize, path: "fuzz.qcow2",
        readAt: { offset, length in
            // pread: a short read (past the end of the bytes given) is nil, as DiskImage.inspect returns it.
            guard length >= 0, offset <= UInt64(file.count), UInt64(file.count) - offset >= UInt64(length) else {
                return nil
            }
            return Array(file[Int(offset)..<Int(offset) + length])
        })
    if let info {
        // What the parser claims must be consistent with what it read.
        precondition(info.fileSize == fileSize, "fileSize changed")
        if info.format == .raw { precondition(info.virtualSize == fileSize && info.backingFile == nil) }
        if let name = info.backingFile { precondition(name.utf8.count <= 1023 * 3, "backing name too long") }
    }
    return 0
}

// MARK: - Entry point

/// What SwiftPM's debug link calls for `main`: libFuzzer's driver, with this target.
@_cdecl("fuzz_qcow2_main")
public func fuzzerMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    runLibFuzzer(argc, argv, fuzz)
}
