/// The error classes QEMU puts in `{"error": {"class": ..., "desc": ...}}` (qapi/error.json).
public enum QMPErrorClass: Sendable, Hashable, CustomStringConvertible {
    /// Most failures: a bad argument, a state that does not allow the command.
    case genericError
    /// The command does not exist in this QEMU.
    case commandNotFound
    /// The device exists but has no medium or backend.
    case deviceNotActive
    /// No device of that name.
    case deviceNotFound
    /// KVM lacks a capability the command needs.
    case kvmMissingCap
    /// A class this client does not know (a newer QEMU).
    case other(String)

    public init(_ name: String) {
        switch name {
        case "GenericError": self = .genericError
        case "CommandNotFound": self = .commandNotFound
        case "DeviceNotActive": self = .deviceNotActive
        case "DeviceNotFound": self = .deviceNotFound
        case "KVMMissingCap": self = .kvmMissingCap
        default: self = .other(name)
        }
    }

    /// The name as QEMU spells it.
    public var description: String {
        switch self {
        case .genericError: "GenericError"
        case .commandNotFound: "CommandNotFound"
        case .deviceNotActive: "DeviceNotActive"
        case .deviceNotFound: "DeviceNotFound"
        case .kvmMissingCap: "KVMMissingCap"
        case .other(let name): name
        }
    }
}

/// What can go wrong talking QMP.
public enum QMPError: Error, Sendable, Hashable, CustomStringConvertible {
    /// QEMU answered the command with an error.
    case command(command: String, errorClass: QMPErrorClass, description: String)
    /// A human-monitor command (savevm, loadvm, delvm) printed an error instead of nothing.
    case humanMonitor(command: String, output: String)
    /// The socket could not be connected.
    case connectionFailed(path: String, reason: String)
    /// The peer closed the connection; `partialMessage` holds the bytes of a message it left half-written.
    case connectionClosed(partialMessage: String?)
    /// The peer sent something that is not a QMP message; the connection was closed because the stream
    /// cannot be trusted after it.
    case malformedMessage(String)
    /// The peer sent a line longer than the client accepts without ending it.
    case messageTooLong(limit: Int)
    /// The first message was not a QMP greeting, or capabilities negotiation failed.
    case unexpectedGreeting(String)
    /// No answer came in time (a monitor held by another client never sends its greeting).
    case timedOut(what: String, after: Duration)

    public var description: String {
        switch self {
        case .command(let command, let errorClass, let description):
            "QMP command \(command) failed (\(errorClass)): \(description)"
        case .humanMonitor(let command, let output):
            "monitor command \"\(command)\" failed: \(output)"
        case .connectionFailed(let path, let reason):
            "could not connect to the QMP socket \(path): \(reason)"
        case .connectionClosed(let partial):
            if let partial {
                "QEMU closed the QMP connection in the middle of a message (\(partial.prefix(200)))"
            } else {
                "QEMU closed the QMP connection"
            }
        case .malformedMessage(let text):
            "QMP peer sent a message that is not a JSON object: \(text.prefix(200))"
        case .messageTooLong(let limit):
            "QMP peer sent more than \(limit) bytes without ending the message"
        case .unexpectedGreeting(let text):
            "QMP handshake failed: \(text.prefix(200))"
        case .timedOut(let what, let after):
            "no answer to \(what) within \(after)"
        }
    }
}
