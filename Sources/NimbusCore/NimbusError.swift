/// The one public error of Nimbus: a code that decides the exit status, a message for people, and the
/// precise error of the module that failed (a `QMPError`, a `SeedError`, ...) as its cause.
///
/// Messages say what was wrong and what to do: `instance name "Web_1" is not a valid hostname: use a-z,
/// 0-9 and '-'`.
public struct NimbusError: Error, Sendable, CustomStringConvertible {
    /// What kind of failure this is; each maps to one exit status.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        /// A stable name, used in `--format json` error output.
        public let name: String
        /// The process exit status for this kind of failure.
        public let exitStatus: Int32

        public var description: String { name }

        /// The user's input is wrong (a flag, a file, a name). Nothing was changed. 64 is EX_USAGE, the status
        /// the argument parser gives its own validation errors.
        public static let invalidArgument = Code(name: "invalid-argument", exitStatus: 64)
        /// The named thing (instance, image, snapshot) does not exist.
        public static let notFound = Code(name: "not-found", exitStatus: 3)
        /// The named thing exists already.
        public static let alreadyExists = Code(name: "already-exists", exitStatus: 4)
        /// The action does not fit the current state (`resume` of a stopped instance).
        public static let invalidState = Code(name: "invalid-state", exitStatus: 5)
        /// Something did not happen in time.
        public static let timeout = Code(name: "timeout", exitStatus: 6)
        /// An external program (qemu, qemu-img, ssh, gpgv) failed; the cause carries its stderr.
        public static let processFailed = Code(name: "process-failed", exitStatus: 7)
        /// A download or a checksum failed.
        public static let integrity = Code(name: "integrity", exitStatus: 8)
        /// The network, a mirror or a socket failed.
        public static let network = Code(name: "network", exitStatus: 9)
        /// The host lacks something (a program, firmware, permission).
        public static let unsupported = Code(name: "unsupported", exitStatus: 10)
        /// Reading or writing a file failed.
        public static let io = Code(name: "io", exitStatus: 11)
        /// The guest booted but did not take its personality: cloud-init never ran (no datasource found,
        /// disabled), or a `--mount` could not be made. The instance is left running for inspection.
        public static let guestSetup = Code(name: "guest-setup", exitStatus: 12)
        /// A bug or a state Nimbus cannot explain.
        public static let internalError = Code(name: "internal", exitStatus: 70)
    }

    /// What kind of failure this is.
    public let code: Code
    /// What went wrong and how to fix it, in one or two sentences.
    public let message: String
    /// The lower-level error this one wraps, if any.
    public let cause: (any Error & Sendable)?

    public init(_ code: Code, _ message: String, cause: (any Error & Sendable)? = nil) {
        self.code = code
        self.message = message
        self.cause = cause
    }

    public var description: String {
        guard let cause else { return message }
        let detail = String(describing: cause)
        return detail.isEmpty || message.contains(detail) ? message : "\(message): \(detail)"
    }
}
