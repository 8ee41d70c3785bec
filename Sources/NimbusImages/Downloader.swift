import AsyncHTTPClient
import Foundation
import NIOCore
import NIOHTTP1
import NimbusCore

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// How far a download (or an import) has come; handed to the caller's progress callback.
public struct TransferProgress: Sendable {
    /// What is transferred, for the display (`ubuntu:24.04`).
    public var what: String
    /// Bytes done so far, including bytes kept from an earlier, interrupted try.
    public var bytes: UInt64
    /// The expected total, when the server or the catalog says.
    public var total: UInt64?
    /// Bytes that were already there when this process started (a resumed download).
    public var resumedFrom: UInt64
    /// True once, at the end.
    public var finished: Bool

    /// A progress report.
    public init(what: String, bytes: UInt64, total: UInt64?, resumedFrom: UInt64, finished: Bool) {
        self.what = what
        self.bytes = bytes
        self.total = total
        self.resumedFrom = resumedFrom
        self.finished = finished
    }
}

/// What a finished transfer produced.
struct TransferResult: Sendable {
    var sha256: String
    var sha512: String?
    var bytes: UInt64
}

/// A file being written into the cache: a descriptor on the partial file, with every write checked so
/// that a full disk (ENOSPC) or a size limit (EFBIG) becomes a clear error.
struct PartialFile: ~Copyable {
    let fd: Int32
    let url: URL

    init(_ url: URL) throws(NimbusError) {
        fd = open(url.path, O_RDWR | O_CREAT | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw posixFailure("create", url) }
        self.url = url
    }

    deinit { close(fd) }

    var size: UInt64 {
        var status = stat()
        return fstat(fd, &status) == 0 && (status.st_mode & S_IFMT) == S_IFREG ? UInt64(status.st_size) : 0
    }

    func truncate() throws(NimbusError) {
        guard ftruncate(fd, 0) == 0, lseek(fd, 0, SEEK_SET) == 0 else { throw posixFailure("truncate", url) }
    }

    func seekToEnd() throws(NimbusError) {
        guard lseek(fd, 0, SEEK_END) >= 0 else { throw posixFailure("seek in", url) }
    }

    func write(_ bytes: UnsafeRawBufferPointer) throws(NimbusError) {
        var done = 0
        while done < bytes.count {
            let n = Glibc.write(fd, bytes.baseAddress! + done, bytes.count - done)
            if n < 0 {
                if errno == EINTR { continue }
                throw PartialFile.writeError(url)
            }
            done += n
        }
    }

    func sync() throws(NimbusError) {
        guard fsync(fd) == 0 else { throw PartialFile.writeError(url) }
    }

    /// Hashes the bytes already in the file (a download resumed by a later process).
    func rehash(into digest: inout StreamingDigest) throws(NimbusError) -> UInt64 {
        let chunk = 4 << 20
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: chunk, alignment: 16)
        defer { buffer.deallocate() }
        var offset: UInt64 = 0
        while true {
            let n = pread(fd, buffer.baseAddress, chunk, off_t(offset))
            if n < 0 {
                if errno == EINTR { continue }
                throw posixFailure("read", url)
            }
            if n == 0 { break }
            digest.update(UnsafeRawBufferPointer(rebasing: buffer[0..<n]))
            offset += UInt64(n)
        }
        return offset
    }

    static func writeError(_ url: URL) -> NimbusError {
        let code = errno
        let reason = String(cString: strerror(code))
        if code == ENOSPC || code == EFBIG || code == EDQUOT {
            let free = DiskSpace.available(at: url).map { ByteSize(bytes: $0).humanReadable } ?? "an unknown amount"
            return NimbusError(
                .io,
                "the disk holding the image cache is full (\(reason), \(free) free) while writing \(url.path): free space there, or "
                    + "point NIMBUS_HOME or XDG_CACHE_HOME at a larger disk; the partial file was removed")
        }
        return NimbusError(.io, "could not write \(url.path): \(reason)")
    }
}

/// Streams one URL into a partial file, hashing as the bytes arrive, resuming with `Range` after a
/// dropped connection and retrying connection errors and 5xx answers with backoff.
struct Downloader: Sendable {
    let policy: RetryPolicy
    let progress: @Sendable (TransferProgress) -> Void

    /// Downloads `url` into `partial` (continuing bytes already there); `size` is the catalog's size,
    /// checked against the server's. On any failure other than a retryable one the partial file is
    /// removed by the caller.
    func download(
        _ url: URL, into partial: URL, size expected: UInt64?, sha512: Bool, what: String
    ) async throws(NimbusError) -> TransferResult {
        let file = try PartialFile(partial)
        let etagFile = Downloader.etagFile(of: partial)
        var digest = StreamingDigest(sha512: sha512)
        var offset = try file.rehash(into: &digest)
        try file.seekToEnd()
        let resumedFrom = offset
        if let expected, offset > expected {
            try file.truncate()
            digest = StreamingDigest(sha512: sha512)
            offset = 0
        }
        if let expected, expected > offset {
            try DiskSpace.require(expected - offset, at: partial, for: what)
        }
        var total = expected
        var attempt = 1
        var lastReported: UInt64 = 0
        while true {
            do {
                if let expected, offset == expected, offset > 0 { break }
                var request = HTTPClientRequest(url: url.absoluteString)
                request.headers.add(name: "User-Agent", value: "nimbus")
                if offset > 0 {
                    request.headers.add(name: "Range", value: "bytes=\(offset)-")
                    // If the file changed since the bytes we hold were sent, the server answers 200 with
                    // the whole new file instead of appending new bytes to old ones.
                    if let etag = try? String(contentsOf: etagFile, encoding: .utf8) {
                        request.headers.add(name: "If-Range", value: etag)
                    }
                }
                let response: HTTPClientResponse
                do {
                    response = try await HTTP.client.execute(request, timeout: .hours(24))
                } catch {
                    throw HTTPFailure.connection(url, HTTP.describe(error))
                }
                let status = Int(response.status.code)
                if status == 200 || status == 206, let etag = response.headers.first(name: "ETag"),
                    !etag.hasPrefix("W/")
                {
                    try? Data(etag.utf8).write(to: etagFile)
                }
                switch status {
                case 200:
                    if offset > 0 {
                        // The server ignored the Range: start over so the hash covers every byte once.
                        try file.truncate()
                        digest = StreamingDigest(sha512: sha512)
                        offset = 0
                    }
                    if let length = response.headers.first(name: "Content-Length").flatMap(UInt64.init) {
                        total = length
                    }
                case 206:
                    guard let range = ContentRange(response.headers.first(name: "Content-Range")), range.start == offset
                    else {
                        try file.truncate()
                        digest = StreamingDigest(sha512: sha512)
                        offset = 0
                        throw HTTPFailure.connection(url, "the server answered a different byte range")
                    }
                    if let length = range.total { total = length }
                case 416 where offset > 0:
                    try file.truncate()
                    digest = StreamingDigest(sha512: sha512)
                    offset = 0
                    throw HTTPFailure.connection(url, "the server refused the byte range; starting over")
                default:
                    throw HTTPFailure.status(status, url)
                }
                // Room checked before the body: the catalog's size was checked before the request, a plain URL's
                // size is known only now.
                if expected == nil, let total, total > offset {
                    try DiskSpace.require(total - offset, at: partial, for: what)
                }
                if let expected, let total, total != expected {
                    throw NimbusError(
                        .integrity,
                        "size mismatch for \(what): the catalog says \(expected) bytes, \(url.absoluteString) has "
                            + "\(total); the download was removed: the mirror may be mid-update, try again later")
                }
                for try await buffer in response.body {
                    try buffer.withUnsafeReadableBytes { bytes throws(NimbusError) in
                        digest.update(bytes)
                        try file.write(bytes)
                    }
                    offset += UInt64(buffer.readableBytes)
                    if let total, offset > total {
                        throw NimbusError(
                            .integrity,
                            "size mismatch for \(what): \(url.absoluteString) sent more than the \(total) bytes expected; "
                                + "the download was removed")
                    }
                    if offset - lastReported >= 1 << 20 {
                        lastReported = offset
                        progress(
                            TransferProgress(
                                what: what, bytes: offset, total: total, resumedFrom: resumedFrom, finished: false))
                    }
                }
                if let total, offset < total {
                    throw HTTPFailure.connection(url, "the body ended after \(offset) of \(total) bytes")
                }
                break
            } catch let failure as HTTPFailure {
                guard failure.isRetryable, attempt < policy.attempts else {
                    if case .connection(_, let reason) = failure, let total, offset < total {
                        throw NimbusError(
                            .network,
                            "download of \(what) was cut short at \(offset) of \(total) bytes after \(attempt) tries "
                                + "(\(reason)); run the command again to resume", cause: failure)
                    }
                    throw failure.error(what)
                }
                try? await Task.sleep(for: policy.delay(beforeAttempt: attempt))
                attempt += 1
            } catch let error as NimbusError {
                throw error
            } catch {
                // A body that broke off mid-stream: resume from `offset` on the next try.
                let failure = HTTPFailure.connection(url, HTTP.describe(error))
                guard attempt < policy.attempts else {
                    throw NimbusError(
                        .network,
                        "download of \(what) was cut short at \(offset) bytes after \(attempt) tries "
                            + "(\(failure)); run the command again to resume", cause: failure)
                }
                try? await Task.sleep(for: policy.delay(beforeAttempt: attempt))
                attempt += 1
            }
        }
        try file.sync()
        if let expected, offset != expected {
            throw NimbusError(
                .integrity,
                "size mismatch for \(what): the catalog says \(expected) bytes, the download has \(offset); "
                    + "the download was removed")
        }
        progress(
            TransferProgress(
                what: what, bytes: offset, total: total ?? offset, resumedFrom: resumedFrom, finished: true))
        let (sha256, sha512) = digest.finalize()
        return TransferResult(sha256: sha256, sha512: sha512, bytes: offset)
    }

    /// Where the strong ETag of the response a partial file came from is kept, for `If-Range`.
    static func etagFile(of partial: URL) -> URL { partial.appendingPathExtension("etag") }

    /// Copies a local file into `partial`, hashing while copying: the fast path for imports and for
    /// file:// mirrors.
    static func copy(
        _ source: URL, into partial: URL, sha512: Bool, what: String, progress: @Sendable (TransferProgress) -> Void
    ) throws(NimbusError) -> TransferResult {
        let input = open(source.path, O_RDONLY | O_CLOEXEC)
        guard input >= 0 else {
            if errno == ENOENT { throw NimbusError(.notFound, "\(source.path) does not exist: check the path") }
            throw posixFailure("open", source)
        }
        defer { close(input) }
        var status = stat()
        guard fstat(input, &status) == 0, (status.st_mode & S_IFMT) == S_IFREG else {
            throw NimbusError(.invalidArgument, "\(source.path) is not a regular file: name a disk image file")
        }
        let total = UInt64(status.st_size)
        try DiskSpace.require(total, at: partial, for: "\(what) (\(source.lastPathComponent))")
        #if canImport(Glibc)
            _ = posix_fadvise(input, 0, 0, Int32(POSIX_FADV_SEQUENTIAL))
        #endif
        let file = try PartialFile(partial)
        try file.truncate()
        var digest = StreamingDigest(sha512: sha512)
        let chunk = 8 << 20
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: chunk, alignment: 4096)
        defer { buffer.deallocate() }
        var offset: UInt64 = 0
        var lastReported: UInt64 = 0
        while true {
            let n = read(input, buffer.baseAddress, chunk)
            if n < 0 {
                if errno == EINTR { continue }
                throw posixFailure("read", source)
            }
            if n == 0 { break }
            let bytes = UnsafeRawBufferPointer(rebasing: buffer[0..<n])
            digest.update(bytes)
            try file.write(bytes)
            offset += UInt64(n)
            if offset - lastReported >= 64 << 20 {
                lastReported = offset
                progress(TransferProgress(what: what, bytes: offset, total: total, resumedFrom: 0, finished: false))
            }
        }
        try file.sync()
        progress(TransferProgress(what: what, bytes: offset, total: offset, resumedFrom: 0, finished: true))
        let (sha256, sha512) = digest.finalize()
        return TransferResult(sha256: sha256, sha512: sha512, bytes: offset)
    }
}

/// `Content-Range: bytes START-END/TOTAL` (TOTAL may be `*`).
struct ContentRange {
    var start: UInt64
    var total: UInt64?

    init?(_ header: String?) {
        guard let header, header.hasPrefix("bytes ") else { return nil }
        let spec = header.dropFirst(6)
        let parts = spec.split(separator: "/", maxSplits: 1)
        guard let range = parts.first, let start = range.split(separator: "-").first.flatMap({ UInt64($0) }) else {
            return nil
        }
        self.start = start
        total = parts.count == 2 ? UInt64(parts[1]) : nil
    }
}
