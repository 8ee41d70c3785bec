import Crypto
import Foundation
import NIOCore
import NIOHTTP1
import NIOPosix
import Synchronization

/// A real HTTP/1.1 server on 127.0.0.1 serving a mirror tree from memory, with byte ranges
/// (`Range` → 206 + `Content-Range`, 416), validators (`ETag` → 304) and injected faults: a status
/// answered instead of the file, or a connection dropped after N bytes of the body.
final class MirrorServer: Sendable {
    enum Fault: Sendable {
        /// Answer with this status instead of the file.
        case status(Int)
        /// Send the headers and this many body bytes, then close the connection.
        case dropAfter(Int)
    }

    struct Request: Sendable {
        var path: String
        var range: String?
        var ifNoneMatch: String?
    }

    private let files = Mutex<[String: Data]>([:])
    private let faults = Mutex<[String: [Fault]]>([:])
    private let log = Mutex<[Request]>([])
    private let channel: any Channel
    let port: Int

    private init(channel: any Channel) {
        self.channel = channel
        port = channel.localAddress?.port ?? 0
    }

    var base: URL { URL(string: "http://127.0.0.1:\(port)/")! }

    func url(_ path: String) -> URL { base.appending(path: path) }

    static func start() async throws -> MirrorServer {
        let holder = Mutex<MirrorServer?>(nil)
        let channel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    guard let server = holder.withLock({ $0 }) else { return }
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline()
                    try channel.pipeline.syncOperations.addHandler(MirrorHandler(server: server))
                }
            }
            .bind(host: "127.0.0.1", port: 0).get()
        let server = MirrorServer(channel: channel)
        holder.withLock { $0 = server }
        return server
    }

    func stop() async {
        try? await channel.close()
    }

    /// Puts `data` at `path` (no leading slash).
    func put(_ path: String, _ data: Data) { files.withLock { $0["/" + path] = data } }
    func put(_ path: String, _ text: String) { put(path, Data(text.utf8)) }
    /// Puts every file under `folder` at its path relative to `folder`, below `prefix` (no leading slash).
    func putTree(_ folder: URL, under prefix: String = "") throws {
        let base = folder.standardizedFileURL.resolvingSymlinksInPath().path
        guard let walker = FileManager.default.enumerator(atPath: base) else { return }
        while let relative = walker.nextObject() as? String {
            var isFolder: ObjCBool = false
            let path = base + "/" + relative
            guard FileManager.default.fileExists(atPath: path, isDirectory: &isFolder), !isFolder.boolValue else {
                continue
            }
            put(prefix + relative, try Data(contentsOf: URL(fileURLWithPath: path)))
        }
    }

    /// What is served at `path`.
    func file(_ path: String) -> Data? { files.withLock { $0["/" + path] } }
    func remove(_ path: String) { _ = files.withLock { $0.removeValue(forKey: "/" + path) } }

    /// Queues `fault` for the next `times` requests of `path`.
    func inject(_ fault: Fault, at path: String, times: Int = 1) {
        faults.withLock { $0["/" + path, default: []] += Array(repeating: fault, count: times) }
    }

    func clearFaults() { faults.withLock { $0 = [:] } }

    /// How many requests were made so far, for any path.
    var requestCount: Int { log.withLock { $0.count } }

    /// The requests made so far for `path`.
    func requests(_ path: String) -> [Request] { log.withLock { $0.filter { $0.path == "/" + path } } }

    fileprivate func take(_ path: String, range: String?, ifNoneMatch: String?) -> (Data?, Fault?) {
        log.withLock { $0.append(Request(path: path, range: range, ifNoneMatch: ifNoneMatch)) }
        let fault: Fault? = faults.withLock { queue in
            guard var list = queue[path], !list.isEmpty else { return nil }
            let first = list.removeFirst()
            queue[path] = list
            return first
        }
        return (files.withLock { $0[path] }, fault)
    }
}

/// One connection's handler: answers each request, then closes (Connection: close keeps it simple).
private final class MirrorHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    let server: MirrorServer
    var head: HTTPRequestHead?

    init(server: MirrorServer) { self.server = server }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head): self.head = head
        case .body: break
        case .end:
            if let head { respond(context, head) }
            head = nil
        }
    }

    func respond(_ context: ChannelHandlerContext, _ head: HTTPRequestHead) {
        let rawPath = String(head.uri.split(separator: "?", maxSplits: 1).first ?? "/")
        let path = rawPath.removingPercentEncoding ?? rawPath
        let range = head.headers.first(name: "Range")
        let (found, fault) = server.take(path, range: range, ifNoneMatch: head.headers.first(name: "If-None-Match"))
        if case .status(let code) = fault {
            send(context, status: .init(statusCode: code), headers: [], body: Data("injected \(code)\n".utf8))
            return
        }
        guard let data = found else {
            send(context, status: .notFound, headers: [], body: Data("not found\n".utf8))
            return
        }
        let etag = "\"" + SHA256.hash(data: data).prefix(8).map { String(format: "%02x", $0) }.joined() + "\""
        var headers: [(String, String)] = [
            ("ETag", etag), ("Last-Modified", "Tue, 23 Apr 2024 10:00:00 GMT"), ("Accept-Ranges", "bytes"),
        ]
        if head.headers.first(name: "If-None-Match") == etag {
            send(context, status: .notModified, headers: headers, body: nil)
            return
        }
        var slice = data[...]
        var status = HTTPResponseStatus.ok
        // RFC 9110 13.1.5: a Range whose If-Range validator no longer matches gets the whole file.
        let ifRange = head.headers.first(name: "If-Range")
        if let range, ifRange == nil || ifRange == etag, range.hasPrefix("bytes="),
            let dash = range.firstIndex(of: "-"),
            let start = Int(range[range.index(range.startIndex, offsetBy: 6)..<dash])
        {
            let endText = range[range.index(after: dash)...]
            let end = Int(endText).map { min($0, data.count - 1) } ?? data.count - 1
            guard start < data.count, start <= end else {
                headers.append(("Content-Range", "bytes */\(data.count)"))
                send(context, status: .rangeNotSatisfiable, headers: headers, body: nil)
                return
            }
            slice = data[data.startIndex + start...data.startIndex + end]
            status = .partialContent
            headers.append(("Content-Range", "bytes \(start)-\(end)/\(data.count)"))
        }
        var dropAfter: Int?
        if case .dropAfter(let count) = fault { dropAfter = count }
        send(context, status: status, headers: headers, body: Data(slice), dropAfter: dropAfter)
    }

    func send(
        _ context: ChannelHandlerContext, status: HTTPResponseStatus, headers extra: [(String, String)], body: Data?,
        dropAfter: Int? = nil
    ) {
        var headers = HTTPHeaders(extra)
        headers.add(name: "Content-Length", value: String(body?.count ?? 0))
        headers.add(name: "Connection", value: "close")
        context.write(
            wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: status, headers: headers))), promise: nil)
        if let body, !body.isEmpty {
            let part = dropAfter.map { body.prefix($0) } ?? body
            context.write(wrapOutboundOut(.body(.byteBuffer(ByteBuffer(bytes: part)))), promise: nil)
        }
        if dropAfter != nil {
            context.flush()
            context.close(promise: nil)
            return
        }
        let channel = context.channel
        context.writeAndFlush(wrapOutboundOut(.end(nil))).whenComplete { _ in channel.close(promise: nil) }
    }
}
