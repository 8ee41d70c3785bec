import Foundation
import NimbusCore
import NimbusISO9660
import Yams

/// What can go wrong while building a seed. Wrapped as the cause of a `NimbusError` by `nimbusError`.
public enum SeedError: Error, Sendable, Equatable, CustomStringConvertible {
    /// A YAML document does not parse: `file:line:column: problem`.
    case invalidYAML(file: String, line: Int, column: Int, problem: String)
    /// A document parses but is not what it must be (a mapping, a string...), at `file:line:column`.
    case invalidDocument(file: String, line: Int, column: Int, problem: String)
    /// A value of `InstanceConfig` or a flag is wrong.
    case invalidValue(String)
    /// An SSH key cannot be read.
    case invalidKey(String)
    /// A cloud-config option has no Ignition equivalent.
    case unsupportedByIgnition(option: String)
    /// The ISO image could not be made.
    case image(String)
    /// A file could not be read or written.
    case io(path: String, reason: String)

    /// Yams's syntax error at its place in `file`: the line and column of its mark, its context and problem.
    public init(yaml error: YamlError, file: String) {
        switch error {
        case .scanner(let context, let problem, let mark, _), .parser(let context, let problem, let mark, _),
            .composer(let context, let problem, let mark, _):
            self = .invalidYAML(
                file: file, line: mark.line, column: mark.column,
                problem: [context?.text, problem].compactMap { $0 }.filter { !$0.isEmpty }.joined(separator: " "))
        default:
            self = .invalidYAML(file: file, line: 1, column: 1, problem: String(describing: error))
        }
    }

    public var description: String {
        switch self {
        case .invalidYAML(let file, let line, let column, let problem):
            return "\(file):\(line):\(column): invalid YAML: \(problem)"
        case .invalidDocument(let file, let line, let column, let problem):
            return "\(file):\(line):\(column): \(problem)"
        case .invalidValue(let message), .invalidKey(let message), .image(let message):
            return message
        case .unsupportedByIgnition(let option):
            return "`\(option)` has no Ignition equivalent: remove it, or use --format nocloud"
        case .io(let path, let reason):
            return "\(path): \(reason)"
        }
    }

    /// The error as Nimbus reports it: user mistakes are `.invalidArgument`, file failures `.io`.
    public var nimbusError: NimbusError {
        if case .io = self { return NimbusError(.io, description, cause: self) }
        return NimbusError(.invalidArgument, description, cause: self)
    }
}

/// Writing files all-or-nothing.
enum SeedFiles {
    /// Through NimbusCore's AtomicFile: temporary file, fsync, rename, fsync of the folder.
    static func writeAtomically(_ data: Data, to url: URL, permissions: mode_t) throws(NimbusError) {
        try AtomicFile.write(data, to: url, permissions: permissions)
    }

    /// `image`'s bytes, as `write(_:to:durable:private:)` writes them.
    static func write(_ image: ISO9660Image, to url: URL, durable: Bool, private: Bool = false) throws(SeedError) {
        let bytes: [UInt8]
        do {
            bytes = try image.bytes()
        } catch {
            throw .image(error.description)
        }
        try write(Data(bytes), to: url, durable: durable, private: `private`)
    }

    /// All-or-nothing; fsync'ed only when `durable`. `private` makes the file its owner's alone (0600; else
    /// 0644 as cloud-localds makes it, less the umask when not durable).
    static func write(_ data: Data, to url: URL, durable: Bool, private: Bool = false) throws(SeedError) {
        if durable {
            do {
                try writeAtomically(data, to: url, permissions: `private` ? 0o600 : 0o644)
            } catch {
                throw .io(path: url.path, reason: error.message)
            }
            return
        }
        // Plain POSIX calls: Foundation's `Data.write(to:)` fsyncs the file, which is what `durable` is for.
        let path = url.path
        let temporary = url.deletingLastPathComponent()
            .appending(path: ".\(url.lastPathComponent).\(getpid()).\(UInt32.random(in: 0...UInt32.max)).tmp").path
        let cannotWrite = SeedError.io(
            path: path, reason: "cannot write it (does the folder exist and is it writable?)")
        let fd = open(temporary, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, `private` ? 0o600 : 0o666)
        guard fd >= 0 else { throw cannotWrite }
        let complete = data.withUnsafeBytes { buffer -> Bool in
            guard let base = buffer.baseAddress else { return true }
            var written = 0
            while written < buffer.count {
                let count = Glibc.write(fd, base + written, buffer.count - written)
                if count < 0, errno == EINTR { continue }
                if count <= 0 { return false }
                written += count
            }
            return true
        }
        guard close(fd) == 0, complete else {
            unlink(temporary)
            throw cannotWrite
        }
        guard rename(temporary, path) == 0 else {
            let reason = String(cString: strerror(errno))
            unlink(temporary)
            throw .io(path: path, reason: reason)
        }
    }
}
