import Foundation
import Subprocess

#if canImport(System)
    import System
#else
    import SystemPackage
#endif

/// What a program printed and how it ended.
public struct ProgramOutput: Sendable {
    /// The program's exit status (128 + signal when a signal ended it).
    public let status: Int32
    public let standardOutput: String
    public let standardError: String
}

/// A program that ended badly: which program, its arguments, its status and its own stderr.
public struct ProgramFailure: Error, Sendable, CustomStringConvertible {
    public let program: String
    public let arguments: [String]
    public let status: Int32
    public let standardError: String

    public var description: String {
        let stderr = standardError.trimmingCharacters(in: .whitespacesAndNewlines)
        let head = "\(program) exited with status \(status)"
        return stderr.isEmpty ? head : "\(head): \(stderr)"
    }
}

/// Runs external programs with an argument array, never through a shell (DESIGN.md).
///
/// Programs are found on `PATH`, plus the sbin folders, where Debian keeps `mkfs.ext4` and `libvirtd` but
/// which a non-root user's PATH often lacks.
public enum ProgramRunner {
    /// The folders searched after `PATH`.
    static let extraSearchPath = ["/usr/local/sbin", "/usr/sbin", "/sbin"]

    /// The absolute path of `name`, or nil when it is not installed.
    public static func find(_ name: String, environment: [String: String] = ProcessInfo.processInfo.environment)
        -> String?
    {
        if name.contains("/") { return FileManager.default.isExecutableFile(atPath: name) ? name : nil }
        let folders = (environment["PATH"] ?? "/usr/local/bin:/usr/bin:/bin").split(separator: ":").map(String.init)
        for folder in folders + extraSearchPath {
            let candidate = folder + "/" + name
            if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
        }
        return nil
    }

    /// The absolute path of `name`, or an `.unsupported` error naming the Debian package that has it.
    public static func require(_ name: String, package: String) throws(NimbusError) -> String {
        guard let path = find(name) else {
            throw NimbusError(
                .unsupported, "\(name) is not installed: install it with `apt-get install \(package)`")
        }
        return path
    }

    /// Runs `program` to completion and returns what it printed, whatever its exit status. `environment`
    /// adds to (or overrides) the inherited environment.
    public static func output(
        _ program: String,
        _ arguments: [String],
        input: String? = nil,
        environment: [String: String]? = nil,
        workingDirectory: URL? = nil,
        outputLimit: Int = 16 << 20
    ) async throws(NimbusError) -> ProgramOutput {
        guard let executable = find(program) else {
            throw NimbusError(.unsupported, "\(program) is not installed or not on PATH")
        }
        var overrides: [Environment.Key: String?] = [:]
        for (key, value) in environment ?? [:] {
            if let key = Environment.Key(rawValue: key) { overrides[key] = value }
        }
        do {
            let result = try await Subprocess.run(
                .path(FilePath(executable)),
                arguments: Arguments(arguments),
                environment: .inherit.updating(overrides),
                workingDirectory: workingDirectory.map { FilePath($0.path) },
                input: .string(input ?? ""),
                output: .string(limit: outputLimit),
                error: .string(limit: outputLimit)
            )
            let status: Int32
            switch result.terminationStatus {
            case .exited(let code): status = code
            case .signaled(let signal): status = 128 + signal
            }
            return ProgramOutput(
                status: status, standardOutput: result.standardOutput, standardError: result.standardError)
        } catch {
            throw NimbusError(.processFailed, "could not run \(program)", cause: error)
        }
    }

    /// Runs `program`, handing each piece of its stdout to `onOutput` as it comes (a long job's progress:
    /// `qemu-img convert -p` prints `(42.00/100%)` and a carriage return); a non-zero exit becomes a
    /// `.processFailed` error carrying the program's stderr.
    public static func run(
        _ program: String,
        _ arguments: [String],
        onOutput: @escaping @Sendable (String) -> Void
    ) async throws(NimbusError) {
        guard let executable = find(program) else {
            throw NimbusError(.unsupported, "\(program) is not installed or not on PATH")
        }
        let result: ExecutionResult<Void, SequenceOutput, StringOutput<UTF8>>
        do {
            result = try await Subprocess.run(
                .path(FilePath(executable)), arguments: Arguments(arguments), input: .none, output: .sequence,
                error: .string(limit: 1 << 20)
            ) { execution in
                for try await buffer in execution.standardOutput {
                    onOutput(buffer.withUnsafeBytes { String(decoding: $0, as: UTF8.self) })
                }
            }
        } catch {
            throw NimbusError(.processFailed, "could not run \(program)", cause: error)
        }
        let status: Int32
        switch result.terminationStatus {
        case .exited(let code): status = code
        case .signaled(let signal): status = 128 + signal
        }
        guard status == 0 else {
            let failure = ProgramFailure(
                program: program, arguments: arguments, status: status, standardError: result.standardError)
            throw NimbusError(.processFailed, failure.description, cause: failure)
        }
    }

    /// Runs `program` and returns its stdout; a non-zero exit becomes a `.processFailed` error carrying
    /// the program's stderr.
    @discardableResult
    public static func run(
        _ program: String,
        _ arguments: [String],
        input: String? = nil,
        environment: [String: String]? = nil,
        workingDirectory: URL? = nil
    ) async throws(NimbusError) -> String {
        let result = try await output(
            program, arguments, input: input, environment: environment, workingDirectory: workingDirectory)
        guard result.status == 0 else {
            let failure = ProgramFailure(
                program: program, arguments: arguments, status: result.status, standardError: result.standardError)
            throw NimbusError(.processFailed, failure.description, cause: failure)
        }
        return result.standardOutput
    }
}
