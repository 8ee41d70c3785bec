import Foundation
import NIOCore
import NIOHTTP1
import NIOPosix
import Synchronization

/// Serves a cloud-init NoCloud seed over HTTP, so a machine needs no seed disk (`MachineConfig.Seed.noCloudNet`).
///
/// The server listens on 127.0.0.1 only, on a free port. Inside QEMU's user-mode network the host's loopback
/// is reachable as 10.0.2.2, so the guest is told `guestURL` (`http://10.0.2.2:PORT/`) through the SMBIOS
/// serial number while the server binds `127.0.0.1:PORT`: nothing outside this host can read the seed.
///
/// cloud-init 22.4 (`util.read_seeded`) appends the file names to the seedfrom URL as they are, without a
/// separator: `URL + "meta-data"`, `URL + "user-data"`, `URL + "vendor-data"`; so the URL ends with `/` and
/// the files are served at `/meta-data` and so on. 22.4 does not fetch `network-config` over HTTP (the
/// guest falls back to DHCP on its first NIC); it is served all the same for newer cloud-init.
///
/// Only `GET` and `HEAD` of the four files are answered (anything else: 404, or 405 for other methods). A
/// file counts as fetched once a `GET` response carrying it has been written in full to the socket.
public final class SeedServer: Sendable {
    /// The files of a NoCloud seed, named as cloud-init requests them.
    public enum File: String, CaseIterable, Sendable, Hashable, Comparable {
        case metaData = "meta-data"
        case userData = "user-data"
        case vendorData = "vendor-data"
        case networkConfig = "network-config"

        public static func < (lhs: File, rhs: File) -> Bool { lhs.rawValue < rhs.rawValue }
    }

    /// What cloud-init's NoCloud datasource fetches at every boot (meta-data, user-data, vendor-data).
    public static let fetchedByCloudInit: Set<File> = [.metaData, .userData, .vendorData]

    /// The port on 127.0.0.1.
    public let port: Int
    /// The URL the server answers on, from this host.
    public var hostURL: String { "http://127.0.0.1:\(port)/" }
    /// The URL a guest on QEMU's user-mode network reaches the server at (10.0.2.2 is the host's loopback).
    public var guestURL: String { "http://10.0.2.2:\(port)/" }

    private let core: Core
    private let channel: any Channel

    private init(core: Core, channel: any Channel) {
        self.core = core
        self.channel = channel
        port = channel.localAddress?.port ?? 0
    }

    /// Starts serving `files` on 127.0.0.1, on a port the kernel picks.
    public static func start(files: [File: [UInt8]]) async throws(SeedServerError) -> SeedServer {
        let core = Core(files: files)
        do {
            let channel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
                .childChannelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.configureHTTPServerPipeline()
                        try channel.pipeline.syncOperations.addHandler(SeedHandler(core: core))
                    }
                }
                .bind(host: "127.0.0.1", port: 0).get()
            return SeedServer(core: core, channel: channel)
        } catch {
            throw .cannotListen(reason: String(describing: error))
        }
    }

    /// Starts serving the NoCloud files in `folder`. `meta-data` and `user-data` must be there; a missing
    /// `vendor-data` is served empty (cloud-init asks for it at every boot), a missing `network-config` is
    /// not served.
    public static func start(folder: URL) async throws(SeedServerError) -> SeedServer {
        var files: [File: [UInt8]] = [:]
        for file in File.allCases {
            let url = folder.appending(path: file.rawValue, directoryHint: .notDirectory)
            guard FileManager.default.fileExists(atPath: url.path) else {
                if file == .metaData || file == .userData { throw .missingFile(folder: folder.path, file: file) }
                continue
            }
            do {
                files[file] = Array(try Data(contentsOf: url))
            } catch {
                throw .unreadable(path: url.path, reason: error.localizedDescription)
            }
        }
        if files[.vendorData] == nil { files[.vendorData] = [] }
        return try await start(files: files)
    }

    /// The files served to a `GET` so far.
    public var fetched: Set<File> { core.state.withLock { $0.fetched } }

    /// Returns once every file of `files` has been fetched. Throws `.notFetched` when `timeout` passes
    /// first, or when `isAlive` (asked every half second) says the client is gone, such as a machine that
    /// stopped; `CancellationError` when the calling task is cancelled.
    public func waitUntilFetched(
        _ files: Set<File> = SeedServer.fetchedByCloudInit,
        timeout: Duration,
        while isAlive: @escaping @Sendable () async -> Bool = { true }
    ) async throws {
        enum Outcome: Sendable { case fetched, timedOut, clientGone, cancelled }
        let core = self.core
        let outcome = await withTaskGroup(of: Outcome.self) { group in
            group.addTask {
                await core.waitFor(files)
                return Task.isCancelled ? .cancelled : .fetched
            }
            group.addTask {
                do {
                    try await Task.sleep(for: timeout)
                    return .timedOut
                } catch {
                    return .cancelled
                }
            }
            group.addTask {
                while !Task.isCancelled {
                    do { try await Task.sleep(for: .milliseconds(500)) } catch { return .cancelled }
                    if await !isAlive() { return .clientGone }
                }
                return .cancelled
            }
            let first = await group.next() ?? .cancelled
            group.cancelAll()
            return first
        }
        switch outcome {
        case .fetched:
            return
        case .cancelled:
            throw CancellationError()
        case .timedOut, .clientGone:
            let fetched = self.fetched
            throw SeedServerError.notFetched(
                missing: files.subtracting(fetched).sorted(), fetched: fetched.sorted(), url: guestURL,
                clientGone: outcome == .clientGone)
        }
    }

    /// Stops listening and closes the connections still open. Calling it again does nothing.
    public func shutdown() async {
        try? await channel.close()
    }
}

/// Why a seed server could not start or its files were not fetched.
public enum SeedServerError: Error, Sendable, Hashable, CustomStringConvertible {
    /// Binding 127.0.0.1 failed.
    case cannotListen(reason: String)
    /// A seed folder lacks a file cloud-init requires.
    case missingFile(folder: String, file: SeedServer.File)
    /// A seed file could not be read.
    case unreadable(path: String, reason: String)
    /// The guest did not fetch `missing` before the deadline (or before it stopped, with `clientGone`).
    case notFetched(missing: [SeedServer.File], fetched: [SeedServer.File], url: String, clientGone: Bool)

    public var description: String {
        switch self {
        case .cannotListen(let reason):
            "cannot listen on 127.0.0.1 for the seed: \(reason)"
        case .missingFile(let folder, let file):
            "the seed folder \(folder) has no \(file.rawValue)"
        case .unreadable(let path, let reason):
            "cannot read the seed file \(path): \(reason)"
        case .notFetched(let missing, let fetched, let url, let clientGone):
            "\(missing.map(\.rawValue).joined(separator: ", ")) not fetched from \(url)"
                + (clientGone ? " before the machine stopped" : " in time")
                + " (fetched: \(fetched.isEmpty ? "nothing" : fetched.map(\.rawValue).joined(separator: ", ")))"
        }
    }
}

/// The files and what has been fetched, shared by the server and its connections' handlers.
private final class Core: Sendable {
    struct Waiter {
        let files: Set<SeedServer.File>
        let continuation: CheckedContinuation<Void, Never>
    }

    struct State {
        var fetched: Set<SeedServer.File> = []
        var waiters: [UInt64: Waiter] = [:]
        /// Waits cancelled before their continuation was stored; they resume as soon as they store it.
        var cancelled: Set<UInt64> = []
        var nextID: UInt64 = 0
    }

    let files: [SeedServer.File: [UInt8]]
    let state = Mutex(State())

    init(files: [SeedServer.File: [UInt8]]) { self.files = files }

    /// Marks `file` fetched and wakes the waits it completes.
    func record(_ file: SeedServer.File) {
        let ready: [Waiter] = state.withLock { state in
            state.fetched.insert(file)
            let done = state.waiters.filter { $0.value.files.isSubset(of: state.fetched) }
            for id in done.keys { state.waiters.removeValue(forKey: id) }
            return Array(done.values)
        }
        for waiter in ready { waiter.continuation.resume() }
    }

    /// Returns when all of `files` are fetched, or at once when the task is cancelled.
    func waitFor(_ files: Set<SeedServer.File>) async {
        let id = state.withLock { state in
            state.nextID += 1
            return state.nextID
        }
        await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                let resumeNow = state.withLock { state in
                    if files.isSubset(of: state.fetched) || state.cancelled.remove(id) != nil { return true }
                    state.waiters[id] = Waiter(files: files, continuation: continuation)
                    return false
                }
                if resumeNow { continuation.resume() }
            }
        } onCancel: {
            let waiter: Waiter? = state.withLock { state in
                if let waiter = state.waiters.removeValue(forKey: id) { return waiter }
                state.cancelled.insert(id)
                return nil
            }
            waiter?.continuation.resume()
        }
    }
}

/// One connection: answers each request in turn, keeping the connection open when the client asks.
private final class SeedHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    let core: Core
    var head: HTTPRequestHead?

    init(core: Core) { self.core = core }

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
        let path = head.uri.split(separator: "?", maxSplits: 1).first.map(String.init) ?? "/"
        guard head.method == .GET || head.method == .HEAD else {
            send(
                context, head, status: .methodNotAllowed, body: Array("only GET and HEAD\n".utf8),
                extra: [("Allow", "GET, HEAD")])
            return
        }
        guard path.hasPrefix("/"), let file = SeedServer.File(rawValue: String(path.dropFirst())),
            let body = core.files[file]
        else {
            send(context, head, status: .notFound, body: Array("not found\n".utf8))
            return
        }
        send(context, head, status: .ok, body: body, served: head.method == .GET ? file : nil)
    }

    func send(
        _ context: ChannelHandlerContext, _ request: HTTPRequestHead, status: HTTPResponseStatus, body: [UInt8],
        extra: [(String, String)] = [], served: SeedServer.File? = nil
    ) {
        var headers = HTTPHeaders(extra)
        headers.add(
            name: "Content-Type", value: status == .ok ? "application/octet-stream" : "text/plain; charset=utf-8")
        headers.add(name: "Content-Length", value: String(body.count))
        headers.add(name: "Cache-Control", value: "no-store")
        let keepAlive = request.isKeepAlive
        if !keepAlive { headers.add(name: "Connection", value: "close") }
        context.write(
            wrapOutboundOut(.head(HTTPResponseHead(version: request.version, status: status, headers: headers))),
            promise: nil)
        if request.method != .HEAD, !body.isEmpty {
            context.write(wrapOutboundOut(.body(.byteBuffer(ByteBuffer(bytes: body)))), promise: nil)
        }
        let channel = context.channel
        let core = self.core
        context.writeAndFlush(wrapOutboundOut(.end(nil))).whenComplete { result in
            if case .success = result, let served { core.record(served) }
            if !keepAlive { channel.close(promise: nil) }
        }
    }
}
