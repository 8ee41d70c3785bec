// fuzz-qmp: the QMP reader as QMPClient builds it (QMPLineDecoder in a ByteToMessageHandler, then
// QMPChannelHandler decoding each line as a QMPValue and routing it through QMPConnectionState.receive: greeting,
// events, replies matched by id), on an EmbeddedChannel instead of a socket.
//
// Input: byte 0 picks how many commands are in flight (0-3, bits 0-1) and seeds the chunking; the rest is what
// the server sends. The stream is read twice, once in one write and once in writes of 1-17 bytes, and then
// closed (end of stream). Checked:
// - nothing traps;
// - both readings pass the same lines, in the same order, to the handler while the channel is open
//   (QMPLineDecoder's resumable newline scan), and end the same way (greeting, each command's outcome, events);
// - once the channel is closed, the greeting and every command in flight are completed (nothing waits forever).

import Foundation
import FuzzDriver
import NIOCore
import NIOEmbedded

@testable import NimbusQMP

/// Records each line the decoder passes on while the channel is open.
final class LineRecorder: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer
    var lines: [[UInt8]] = []

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if context.channel.isActive { lines.append(Array(Self.unwrapInboundIn(data).readableBytesView)) }
        context.fireChannelRead(data)
    }
}

/// A promise's outcome, recorded as it completes (EmbeddedEventLoop runs callbacks at once). Values are compared
/// as values: a description would list an object's members in each dictionary's own order.
final class Outcome<Value: Hashable & Sendable>: @unchecked Sendable {
    enum Result: Hashable {
        case value(Value)
        case error(String)
    }
    var result: Result?

    func record(_ result: Swift.Result<Value, any Error>) {
        switch result {
        case .success(let value): self.result = .value(value)
        case .failure(let error): self.result = .error(Self.kind(error))
        }
    }

    /// The error without the parts that quote a message's description.
    static func kind(_ error: any Error) -> String {
        guard let error = error as? QMPError else { return "\(error)" }
        switch error {
        case .command(let command, let errorClass, _): return "command \(command) \(errorClass)"
        case .malformedMessage: return "malformedMessage"
        case .unexpectedGreeting: return "unexpectedGreeting"
        default: return "\(error)"
        }
    }
}

struct Reading: Equatable {
    var lines: [[UInt8]]
    var greeting: Outcome<QMPGreeting>.Result
    var replies: [Outcome<QMPValue>.Result]
    var events: [QMPEvent]
}

func read(_ stream: [UInt8], commands: Int, chunks: ((Int) -> Int)?) -> Reading {
    let loop = EmbeddedEventLoop()
    let channel = EmbeddedChannel(loop: loop)
    let state = QMPConnectionState(greeting: loop.makePromise())
    let recorder = LineRecorder()
    do {
        try channel.pipeline.syncOperations.addHandler(
            ByteToMessageHandler(QMPLineDecoder(maximumLength: QMPClient.maximumMessageLength)))
        try channel.pipeline.syncOperations.addHandler(recorder)
        try channel.pipeline.syncOperations.addHandler(QMPChannelHandler(state: state))
        try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 4444)).wait()
    } catch {
        fatalError("cannot set up the channel: \(error)")
    }

    let greeting = Outcome<QMPGreeting>()
    state.greeting.futureResult.whenComplete { greeting.record($0) }
    var replies: [Outcome<QMPValue>] = []
    for index in 0..<commands {
        let promise = loop.makePromise(of: QMPValue.self)
        let outcome = Outcome<QMPValue>()
        promise.futureResult.whenComplete { outcome.record($0) }
        guard case .success(let id) = state.register(command: "command-\(index)", promise: promise),
            id == "nimbus-\(index + 1)"
        else { fatalError("register gave an unexpected id") }
        replies.append(outcome)
    }
    let (events, continuation) = AsyncStream.makeStream(of: QMPEvent.self, bufferingPolicy: .bufferingNewest(64))
    state.subscribe(continuation)

    var offset = 0
    var step = 0
    while offset < stream.count, channel.isActive {
        let length = min(chunks.map { $0(step) } ?? stream.count, stream.count - offset)
        var buffer = channel.allocator.buffer(capacity: length)
        buffer.writeBytes(stream[offset..<offset + length])
        do {
            try channel.writeInbound(buffer)
        } catch {
            break
        }
        offset += length
        step += 1
    }
    _ = try? channel.finish(acceptAlreadyClosed: true)
    loop.run()

    guard let greeted = greeting.result else { fatalError("the greeting still waits after the channel closed") }
    let replied = replies.enumerated().map { index, reply in
        guard let result = reply.result else { fatalError("command \(index) still waits after the channel closed") }
        return result
    }
    // The stream finished when the channel closed (closed() ends every subscriber), so this drains it.
    let drained = DispatchSemaphore(value: 0)
    let seen = Outcome<[QMPEvent]>()
    Task {
        var received: [QMPEvent] = []
        for await event in events { received.append(event) }
        seen.result = .value(received)
        drained.signal()
    }
    if drained.wait(timeout: .now() + 10) == .timedOut { fatalError("the event stream did not end after close") }
    guard case .value(let received) = seen.result else { fatalError("no events recorded") }
    return Reading(lines: recorder.lines, greeting: greeted, replies: replied, events: received)
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    guard size >= 1 else { return 0 }
    let control = data[0]
    let stream = Array(UnsafeBufferPointer(start: data + 1, count: size - 1))
    let commands = Int(control & 3)
    let whole = read(stream, commands: commands, chunks: nil)
    var seed = UInt32(control) &* 2_654_435_761 | 1
    let chunked = read(
        stream, commands: commands,
        chunks: { _ in
            seed ^= seed << 13
            seed ^= seed >> 17
            seed ^= seed << 5
            return 1 + Int(seed % 17)
        })
    if whole != chunked {
        fatalError(
            """
            the stream read in one write and in small writes differs:
            whole:   \(whole.lines.map { String(decoding: $0, as: UTF8.self).debugDescription }) \(whole.greeting) \(whole.replies) \(whole.events)
            chunked: \(chunked.lines.map { String(decoding: $0, as: UTF8.self).debugDescription }) \(chunked.greeting) \(chunked.replies) \(chunked.events)
            """)
    }
    return 0
}

// MARK: - Entry point

/// What SwiftPM's debug link calls for `main`: libFuzzer's driver, with this target.
@_cdecl("fuzz_qmp_main")
public func fuzzerMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    runLibFuzzer(argc, argv, fuzz)
}
