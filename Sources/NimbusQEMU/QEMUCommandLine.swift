import Foundation
import NimbusMachines

/// A QEMU command line as a value: the program, its options in order, and the folder it starts in.
///
/// Rendered to an argument array for `execve`, never to a shell string, so paths with spaces, quotes or
/// semicolons need no quoting. Commas are the one thing QEMU itself parses inside an option value
/// (`key=value,key=value`), and `QEMUCommandLine.escape` doubles them, as QEMU's option parser expects.
public struct QEMUCommandLine: Sendable, Hashable {
    /// One option: `-name` followed by its value, if any.
    public struct Option: Sendable, Hashable {
        public var name: String
        public var value: String?

        public init(_ name: String, _ value: String? = nil) {
            self.name = name
            self.value = value
        }

        /// An option whose value is a `driver,key=value,...` list; values are comma-escaped.
        public init(_ name: String, _ head: String?, _ properties: KeyValuePairs<String, String>) {
            self.init(name, head, properties.map { (key: $0.key, value: $0.value) })
        }

        /// The same, from properties built up in code.
        public init(_ name: String, _ head: String?, _ properties: [(key: String, value: String)]) {
            var parts = head.map { [$0] } ?? []
            parts += properties.map { "\($0.key)=\(QEMUCommandLine.escape($0.value))" }
            self.init(name, parts.joined(separator: ","))
        }
    }

    /// The program, found on PATH.
    public var executable: String
    /// The options, in the order QEMU gets them.
    public var options: [Option]
    /// Arguments appended after the options, verbatim.
    public var extraArguments: [String]
    /// The folder QEMU starts in. Socket paths are relative to it, which keeps them under the 108-byte
    /// `sun_path` limit however deep the instance folder is.
    public var workingDirectory: String

    public init(
        executable: String = "qemu-system-x86_64", options: [Option] = [], extraArguments: [String] = [],
        workingDirectory: String
    ) {
        self.executable = executable
        self.options = options
        self.extraArguments = extraArguments
        self.workingDirectory = workingDirectory
    }

    /// The arguments after the program name.
    public var arguments: [String] {
        options.flatMap { option in [option.name] + (option.value.map { [$0] } ?? []) } + extraArguments
    }

    /// The whole argument vector, program first.
    public func render() -> [String] { [executable] + arguments }

    /// Doubles commas, QEMU's escape for a comma inside an option value.
    public static func escape(_ value: String) -> String { MachineConfig.qemuEscape(value) }

    /// The command line for a person to read or paste (each argument single-quoted when needed). Never
    /// executed.
    public var displayString: String {
        render().map { argument in
            argument.allSatisfy({ $0.isLetter || $0.isNumber || "-_./=:,@".contains($0) })
                ? argument : "'" + argument.replacingOccurrences(of: "'", with: #"'\''"#) + "'"
        }.joined(separator: " ")
    }
}
