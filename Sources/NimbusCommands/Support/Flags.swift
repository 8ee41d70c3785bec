import ArgumentParser
import Logging
import NimbusInstances
import NimbusMachines

/// Option groups shared by many commands, attached with `@OptionGroup`.
public enum Flags {
    /// Verbosity, shared by every command.
    public struct Global: ParsableArguments {
        @Flag(name: .shortAndLong, help: "Log what Nimbus does, to stderr.")
        public var verbose = false

        @Flag(name: .shortAndLong, help: "Print only results and errors.")
        public var quiet = false

        public init() {}

        /// Installs the stderr log handler at the level these flags ask for.
        public func bootstrapLogging() {
            let level: Logger.Level = verbose ? .debug : (quiet ? .error : .notice)
            LoggingSystem.bootstrap { label in
                var handler = StreamLogHandler.standardError(label: label)
                handler.logLevel = level
                return handler
            }
        }
    }

    /// `--format`, for commands whose results a program may read.
    public struct Output: ParsableArguments {
        @Option(name: .long, help: "Output format: table, json, yaml or csv.")
        public var format: OutputFormat = .table

        public init() {}
    }
}

/// The formats of `--format`. JSON is the stable, documented one, with sorted keys.
public enum OutputFormat: String, ExpressibleByArgument, CaseIterable, Sendable {
    case table, json, yaml, csv
}

extension MountType: ExpressibleByArgument {}
extension AcceleratorChoice: ExpressibleByArgument {}
extension FirmwareChoice: ExpressibleByArgument {}
extension DriverKind: ExpressibleByArgument {}
