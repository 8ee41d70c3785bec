import Foundation
import NIOCore
import NIOPosix
import Synchronization

/// An asynchronous QMP client on a Unix socket: the greeting, `qmp_capabilities`, commands matched to
/// their replies by `id`, and the events QEMU sends in between.
///
/// It follows the QMP specification (docs/interop/qmp-spec in QEMU): every message is one JSON object
/// ended by a newline; the server greets first, the client negotiates capabilities, then commands may be
/// sent at any time and each reply carries the command's `id`. Events interleave freely, even between a
/// command and its reply (QEMU sends SHUTDOWN before the reply to `quit`).
///
/// Built on SwiftNIO rather than blocking sockets so that waiting for a reply or an event never holds a
/// thread, a half-written message at EOF is noticed by the decoder, and a closed socket fails every
/// pending command at once.
public final class QMPClient: Sendable {
    /// What the server said first.
    public let greeting: QMPGreeting
    private let channel: any Channel
    private let state: QMPConnectionState

    private init(greeting: QMPGreeting, channel: any Channel, state: QMPConnectionState) {
        self.greeting = greeting
        self.channel = channel
        self.state = state
    }

    /// The longest message accepted; QEMU's largest replies (query-qmp-schema) are well under this.
    public static let maximumMessageLength = 16 << 20

    /// Connects to the QMP socket at `path`, reads the greeting and leaves negotiation mode.
    ///
    /// `timeout` bounds the handshake: QEMU serves one monitor client at a time, so a second client
    /// connects but gets no greeting until the first leaves.
    public static func connect(path: String, timeout: Duration = .seconds(10)) async throws(QMPError) -> QMPClient {
        try await open(what: path, timeout: timeout) { bootstrap in
            bootstrap.connect(unixDomainSocketPath: path)
        }
    }

    /// Takes over an already connected stream socket (a `socketpair` end in tests, an inherited fd). The
    /// client owns `descriptor` afterwards and closes it.
    public static func connect(descriptor: CInt, timeout: Duration = .seconds(10)) async throws(QMPError) -> QMPClient {
        try await open(what: "descriptor \(descriptor)", timeout: timeout) { bootstrap in
            bootstrap.withConnectedSocket(descriptor)
        }
    }

    private static func open(
        what: String, timeout: Duration,
        _ connect: (ClientBootstrap) -> EventLoopFuture<any Channel>
    ) async throws(QMPError) -> QMPClient {
        let loop = MultiThreadedEventLoopGroup.singleton.next()
        let state = QMPConnectionState(greeting: loop.makePromise())
        let bootstrap = ClientBootstrap(group: loop).channelInitializer { channel in
            channel.eventLoop.makeCompletedFuture {
                try channel.pipeline.syncOperations.addHandler(
                    ByteToMessageHandler(QMPLineDecoder(maximumLength: maximumMessageLength)))
                try channel.pipeline.syncOperations.addHandler(QMPChannelHandler(state: state))
            }
        }
        // QEMU listens on its monitor with a backlog of one: while it serves a client and another waits, a
        // third connect fails at once with EAGAIN (`nimbus list` in one terminal while `nimbus start` in
        // another talks to the same QEMU). That is a busy monitor, not a dead one: tried again until `timeout`.
        let connectDeadline = ContinuousClock.now + timeout
        var channel: any Channel
        while true {
            do {
                channel = try await connect(bootstrap).get()
                break
            } catch let error as IOError where error.errnoCode == EAGAIN && ContinuousClock.now < connectDeadline {
                try? await Task.sleep(for: .milliseconds(Int.random(in: 10...40)))
            } catch {
                let failure = QMPError.connectionFailed(path: what, reason: String(describing: error))
                state.greeting.fail(failure)
                throw failure
            }
        }
        let client: QMPClient
        do {
            let deadline = loop.scheduleTask(in: .init(timeout)) {
                state.greeting.fail(QMPError.timedOut(what: "the QMP greeting", after: timeout))
            }
            defer { deadline.cancel() }
            let greeting = try await state.greeting.futureResult.get()
            client = QMPClient(greeting: greeting, channel: channel, state: state)
            _ = try await client.execute("qmp_capabilities", timeout: timeout)
        } catch {
            try? await channel.close()
            if let error = error as? QMPError {
                if case .command = error { throw .unexpectedGreeting(error.description) }
                throw error
            }
            throw .unexpectedGreeting(String(describing: error))
        }
        return client
    }

    /// Sends `command` with `arguments` and returns its reply's `return` member.
    ///
    /// An error reply becomes `QMPError.command` with QEMU's class and description; a closed connection
    /// fails with `.connectionClosed`; `timeout` (none by default: `savevm` may take minutes) bounds the wait.
    @discardableResult
    public func execute(_ command: String, arguments: QMPValue? = nil, timeout: Duration? = nil)
        async throws(QMPError) -> QMPValue
    {
        let promise = channel.eventLoop.makePromise(of: QMPValue.self)
        let id: String
        switch state.register(command: command, promise: promise) {
        case .success(let registered): id = registered
        case .failure(let error):
            promise.fail(error)
            throw error
        }
        var message: [String: QMPValue] = ["execute": .string(command), "id": .string(id)]
        if let arguments { message["arguments"] = arguments }
        var buffer = channel.allocator.buffer(capacity: 256)
        do {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
            buffer.writeBytes(try encoder.encode(QMPValue.object(message)))
        } catch {
            state.fail(id: id, with: .malformedMessage("could not encode \(command): \(error)"))
            return try await Self.wait(promise)
        }
        buffer.writeString("\n")
        channel.writeAndFlush(buffer).whenFailure { [state] error in
            state.fail(id: id, with: .connectionClosed(partialMessage: nil))
        }
        var deadline: Scheduled<Void>?
        if let timeout {
            deadline = channel.eventLoop.scheduleTask(in: .init(timeout)) { [state] in
                state.fail(id: id, with: .timedOut(what: command, after: timeout))
            }
        }
        defer { deadline?.cancel() }
        return try await Self.wait(promise)
    }

    private static func wait<T: Sendable>(_ promise: EventLoopPromise<T>) async throws(QMPError) -> T {
        do {
            return try await promise.futureResult.get()
        } catch let error as QMPError {
            throw error
        } catch {
            throw .connectionClosed(partialMessage: nil)
        }
    }

    /// A stream of the events that arrive from now on. Each call makes a new subscriber; the stream ends
    /// when the connection closes. Subscribe before sending the command whose event you wait for.
    public func events() -> AsyncStream<QMPEvent> {
        let (stream, continuation) = AsyncStream.makeStream(of: QMPEvent.self, bufferingPolicy: .bufferingNewest(1024))
        state.subscribe(continuation)
        return stream
    }

    /// Whether the connection is still open.
    public var isConnected: Bool { channel.isActive }

    /// Closes the connection; pending commands fail with `.connectionClosed`.
    public func close() async {
        try? await channel.close()
    }

    /// Waits until the peer closes the connection (QEMU exits after `quit` or a shutdown).
    public func waitUntilClosed() async {
        try? await channel.closeFuture.get()
    }
}

/// What the connection shares between callers and the channel handler.
final class QMPConnectionState: Sendable {
    struct Pending {
        let command: String
        let promise: EventLoopPromise<QMPValue>
    }

    struct State {
        var nextID = 1
        var pending: [String: Pending] = [:]
        var subscribers: [Int: AsyncStream<QMPEvent>.Continuation] = [:]
        var nextSubscriber = 0
        var greeted = false
        /// Set once the connection is closed; later commands fail with it at once.
        var closed: QMPError?
        /// Why the connection is being closed, when the peer broke the protocol.
        var failure: QMPError?
    }

    let greeting: EventLoopPromise<QMPGreeting>
    private let state = Mutex(State())

    init(greeting: EventLoopPromise<QMPGreeting>) {
        self.greeting = greeting
    }

    func register(command: String, promise: EventLoopPromise<QMPValue>) -> Result<String, QMPError> {
        state.withLock { state in
            if let closed = state.closed { return .failure(closed) }
            let id = "nimbus-\(state.nextID)"
            state.nextID += 1
            state.pending[id] = Pending(command: command, promise: promise)
            return .success(id)
        }
    }

    func fail(id: String, with error: QMPError) {
        let pending = state.withLock { $0.pending.removeValue(forKey: id) }
        pending?.promise.fail(error)
    }

    func subscribe(_ continuation: AsyncStream<QMPEvent>.Continuation) {
        let closed = state.withLock { state -> Bool in
            if state.closed != nil { return true }
            state.subscribers[state.nextSubscriber] = continuation
            state.nextSubscriber += 1
            return false
        }
        if closed { continuation.finish() }
    }

    /// Routes one complete message from the server.
    func receive(_ message: QMPValue) throws(QMPError) {
        guard case .object(let members) = message else {
            throw .malformedMessage(String(describing: message))
        }
        if let qmp = members["QMP"] {
            let version = qmp["version"]?["qemu"]
            let parts = ["major", "minor", "micro"].map { version?[$0]?.intValue.map(String.init) ?? "?" }
            let capabilities = qmp["capabilities"]?.arrayValue?.compactMap(\.stringValue) ?? []
            let greeting = QMPGreeting(
                version: parts.joined(separator: "."),
                package: qmp["version"]?["package"]?.stringValue ?? "",
                capabilities: capabilities)
            state.withLock { $0.greeted = true }
            self.greeting.succeed(greeting)
            return
        }
        guard state.withLock({ $0.greeted }) else {
            throw .unexpectedGreeting(String(describing: message))
        }
        if let name = members["event"]?.stringValue {
            let stamp = members["timestamp"]
            let timestamp = stamp.flatMap { stamp in
                stamp["seconds"]?.doubleValue.map { $0 + (stamp["microseconds"]?.doubleValue ?? 0) / 1e6 }
            }
            let event = QMPEvent(name: name, data: members["data"] ?? .null, timestamp: timestamp)
            let subscribers = state.withLock { Array($0.subscribers.values) }
            for subscriber in subscribers { subscriber.yield(event) }
            return
        }
        let reply = members["return"]
        let error = members["error"]
        guard reply != nil || error != nil else {
            throw .malformedMessage(String(describing: message))
        }
        let pending: Pending? = state.withLock { state in
            if let id = members["id"]?.stringValue { return state.pending.removeValue(forKey: id) }
            // QEMU answers a request it could not parse with an error without id; it belongs to the only
            // command in flight, if there is exactly one.
            if members["id"] == nil, state.pending.count == 1, let key = state.pending.keys.first {
                return state.pending.removeValue(forKey: key)
            }
            return nil
        }
        guard let pending else {
            throw .malformedMessage("a reply to no command in flight: \(message)")
        }
        if let error {
            pending.promise.fail(
                QMPError.command(
                    command: pending.command,
                    errorClass: QMPErrorClass(error["class"]?.stringValue ?? "GenericError"),
                    description: error["desc"]?.stringValue ?? String(describing: error)))
        } else {
            pending.promise.succeed(reply ?? .null)
        }
    }

    /// Records why the connection is about to close (a protocol violation, a truncated message).
    func record(_ failure: QMPError) {
        state.withLock { state in
            if state.failure == nil { state.failure = failure }
        }
    }

    /// Fails everything still waiting and ends every event stream.
    func closed() {
        let (pending, subscribers, error) = state.withLock { state in
            let error = state.failure ?? .connectionClosed(partialMessage: nil)
            state.closed = error
            let pending = Array(state.pending.values)
            let subscribers = Array(state.subscribers.values)
            state.pending = [:]
            state.subscribers = [:]
            return (pending, subscribers, error)
        }
        greeting.fail(error)
        for item in pending { item.promise.fail(error) }
        for subscriber in subscribers { subscriber.finish() }
    }
}

/// Splits the byte stream into messages: QEMU ends each with "\r\n"; JSON allows the "\r" as whitespace.
struct QMPLineDecoder: ByteToMessageDecoder {
    typealias InboundOut = ByteBuffer
    let maximumLength: Int
    /// How many readable bytes are known to hold no newline, so a long message is scanned once, not once
    /// per read.
    private var scanned = 0

    init(maximumLength: Int) { self.maximumLength = maximumLength }

    mutating func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        let view = buffer.readableBytesView
        guard let newline = view.dropFirst(scanned).firstIndex(of: UInt8(ascii: "\n")) else {
            scanned = buffer.readableBytes
            if scanned > maximumLength { throw QMPError.messageTooLong(limit: maximumLength) }
            return .needMoreData
        }
        scanned = 0
        guard let line = buffer.readSlice(length: newline - buffer.readerIndex) else { return .needMoreData }
        buffer.moveReaderIndex(forwardBy: 1)
        context.fireChannelRead(Self.wrapInboundOut(line))
        return .continue
    }

    mutating func decodeLast(context: ChannelHandlerContext, buffer: inout ByteBuffer, seenEOF: Bool) throws
        -> DecodingState
    {
        while try decode(context: context, buffer: &buffer) == .continue {}
        let rest = buffer.readString(length: buffer.readableBytes) ?? ""
        if !rest.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty {
            throw QMPError.connectionClosed(partialMessage: rest)
        }
        return .needMoreData
    }
}

/// Parses each line and hands it to the connection state; any protocol violation closes the channel.
final class QMPChannelHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    let state: QMPConnectionState

    init(state: QMPConnectionState) { self.state = state }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let line = Self.unwrapInboundIn(data)
        let bytes = Data(line.readableBytesView)
        if bytes.allSatisfy({ $0 == UInt8(ascii: " ") || $0 == UInt8(ascii: "\r") || $0 == UInt8(ascii: "\t") }) {
            return
        }
        do throws(QMPError) {
            let message: QMPValue
            do {
                message = try JSONDecoder().decode(QMPValue.self, from: bytes)
            } catch {
                throw QMPError.malformedMessage(String(decoding: bytes, as: UTF8.self))
            }
            try state.receive(message)
        } catch {
            state.record(error)
            context.close(promise: nil)
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if let error = error as? QMPError {
            state.record(error)
        } else if let error = error as? ByteToMessageDecoderError,
            case .leftoverDataWhenDone = error
        {
            state.record(.connectionClosed(partialMessage: nil))
        } else if let error = error as? IOError, [ECONNRESET, EPIPE].contains(error.errnoCode) {
            // QEMU exiting (after quit or a shutdown) may reset the socket rather than close it.
            state.record(.connectionClosed(partialMessage: nil))
        } else {
            state.record(.connectionFailed(path: "the open QMP connection", reason: String(describing: error)))
        }
        context.close(promise: nil)
    }

    func channelInactive(context: ChannelHandlerContext) {
        state.closed()
        context.fireChannelInactive()
    }
}
