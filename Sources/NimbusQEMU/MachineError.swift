import NimbusCore
import NimbusMachines

/// How QEMU refused to start, read from its own stderr.
public enum MachineError: Error, Sendable, Hashable, CustomStringConvertible {
    /// QEMU rejected an option or a value on its command line.
    case invalidOption(standardError: String)
    /// A file QEMU had to open (firmware, disk, kernel, seed) is missing or unreadable.
    case fileNotFound(standardError: String)
    /// A host port for a forward is taken by another program.
    case portInUse(port: UInt16?, standardError: String)
    /// Any other start-up failure.
    case startFailed(status: Int32, standardError: String)

    /// QEMU's own words.
    public var standardError: String {
        switch self {
        case .invalidOption(let text), .fileNotFound(let text), .portInUse(_, let text), .startFailed(_, let text):
            text
        }
    }

    public var description: String { standardError }

    /// Classifies QEMU's stderr after a failed start.
    static func classify(status: Int32, standardError raw: String) -> MachineError {
        let text = raw.trimmingCharacters(in: .whitespacesAndNewlines)
        if text.contains("Could not set up host forwarding rule") {
            // The rule is quoted: 'tcp:127.0.0.1:2222-:22'; the host port is the last field before "-:".
            let port = text.split(separator: "'").dropFirst().first.flatMap { rule in
                rule.split(separator: "-").first?.split(separator: ":").last.flatMap { UInt16($0) }
            }
            return .portInUse(port: port, standardError: text)
        }
        if text.contains("Could not open") || text.contains("No such file or directory")
            || text.contains("Permission denied") || text.contains("could not load")
        {
            return .fileNotFound(standardError: text)
        }
        let optionMarkers = [
            "invalid option", "Invalid parameter", "Parameter '", "is not a valid", "Property '", "Invalid SMP",
            "unsupported", "Unsupported", "Invalid ", "requires an argument", "Unknown", "unknown", "must be",
        ]
        if optionMarkers.contains(where: text.contains) { return .invalidOption(standardError: text) }
        return .startFailed(status: status, standardError: text)
    }

    /// The public error for a start of machine `name`, with this error as its cause.
    func nimbusError(machine name: String) -> NimbusError {
        switch self {
        case .invalidOption(let text):
            NimbusError(.invalidArgument, "QEMU rejected the command line of machine \(name): \(text)", cause: self)
        case .fileNotFound(let text):
            NimbusError(
                .notFound,
                "QEMU could not open a file of machine \(name): \(text); check that the path exists and is readable",
                cause: self)
        case .portInUse(let port, let text):
            NimbusError(
                .network,
                "host port \(port.map(String.init) ?? "?") of machine \(name) is already in use: choose another port or stop the program that holds it (QEMU: \(text))",
                cause: self)
        case .startFailed(let status, let text):
            NimbusError(.processFailed, "QEMU could not start machine \(name) (status \(status)): \(text)", cause: self)
        }
    }
}
