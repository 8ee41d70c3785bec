import Foundation
import NimbusCore

#if canImport(Glibc)
    import Glibc
#endif

/// How Nimbus reaches a guest: the system OpenSSH client, the installation's key, and the guest's host
/// keys pinned in a per-instance known_hosts before its first boot, with `StrictHostKeyChecking=yes`: no trust
/// on first use. Connection sharing (ControlMaster) keeps repeated `exec` fast.
public struct SSHAccess: Sendable {
    /// The installation's private key.
    public let identity: URL
    /// The instance's known_hosts, holding the host keys Nimbus generated for it.
    public let knownHosts: URL
    /// The name the host keys are filed under in known_hosts (independent of the port).
    public let hostAlias: String
    /// The guest user to log in as (the instance's `sshUser`, `nimbus` by default).
    public let user: String
    /// Where the forwarded port is: 127.0.0.1, or the remote libvirt host the guest runs on.
    public let host: String
    /// The port on `host` forwarded to the guest's SSH.
    public let port: UInt16
    /// Where the shared connection's socket lives.
    public let controlDirectory: URL

    /// Access to `user` on the guest through `host`:`port`; `host` is 127.0.0.1 unless the guest runs on
    /// a remote libvirt host.
    public init(
        identity: URL, knownHosts: URL, hostAlias: String, user: String, host: String = "127.0.0.1", port: UInt16,
        controlDirectory: URL
    ) {
        self.identity = identity
        self.knownHosts = knownHosts
        self.hostAlias = hostAlias
        self.user = user
        self.host = host
        self.port = port
        self.controlDirectory = controlDirectory
    }

    /// The options every ssh and scp call uses.
    public var options: [String] {
        [
            "-o", "IdentitiesOnly=yes", "-i", identity.path,
            "-o", "UserKnownHostsFile=\(knownHosts.path)", "-o", "GlobalKnownHostsFile=/dev/null",
            "-o", "StrictHostKeyChecking=yes", "-o", "HostKeyAlias=\(hostAlias)",
            "-o", "ControlMaster=auto", "-o", "ControlPath=\(controlDirectory.path)/%C", "-o", "ControlPersist=60",
            "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=10",
        ]
    }

    /// `ssh` arguments that run `command` in the guest. Each word is quoted for the remote shell, so
    /// `nimbus exec web -- ls "my file"` lists one file.
    public func sshArguments(command: [String], terminal: Bool = false, batch: Bool = true) -> [String] {
        var arguments = options + ["-p", String(port)]
        if batch { arguments += ["-o", "BatchMode=yes"] }
        arguments.append(terminal ? "-t" : "-T")
        arguments.append("\(user)@\(host)")
        if !command.isEmpty {
            arguments.append("--")
            arguments.append(command.map(Self.shellQuote).joined(separator: " "))
        }
        return arguments
    }

    /// `scp` arguments copying `sources` to `destination`; a guest path is written `:path`.
    public func scpArguments(sources: [String], destination: String, recursive: Bool) -> [String] {
        let remote = { (path: String) in path.hasPrefix(":") ? "\(user)@\(host)\(path)" : path }
        return options + ["-P", String(port), "-o", "BatchMode=yes"] + (recursive ? ["-r"] : [])
            + sources.map(remote) + [remote(destination)]
    }

    /// Runs `command` in the guest and returns what it printed and its exit status (255: ssh itself failed).
    public func run(_ command: [String], input: String? = nil) async throws(NimbusError) -> ProgramOutput {
        try prepare()
        return try await ProgramRunner.output("ssh", sshArguments(command: command), input: input)
    }

    /// Creates the control folder (0700: the socket grants a shell in the guest).
    public func prepare() throws(NimbusError) {
        do {
            try FileManager.default.createDirectory(
                at: controlDirectory, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        } catch {
            throw NimbusError(.io, "could not create \(controlDirectory.path)", cause: error)
        }
    }

    /// Ends the shared connection, if one is open (before the guest stops, so ssh does not hang on it).
    public func closeSharedConnection() async {
        _ = try? await ProgramRunner.output("ssh", options + ["-p", String(port), "-O", "exit", "\(user)@\(host)"])
    }

    /// Replaces this process with `ssh` (or `scp`), so the terminal, the streams and the exit status are
    /// the guest command's own. Returns only if exec fails.
    public static func execReplacingProcess(_ program: String, _ arguments: [String]) -> NimbusError {
        guard let path = ProgramRunner.find(program) else {
            return NimbusError(
                .unsupported, "\(program) is not installed: install it with `apt-get install openssh-client`")
        }
        var argv: [UnsafeMutablePointer<CChar>?] = ([program] + arguments).map { strdup($0) }
        argv.append(nil)
        // A libvirt connection made earlier ignores SIGPIPE; the guest command's pipes want the default.
        signal(SIGPIPE, SIG_DFL)
        execv(path, &argv)
        return NimbusError(.processFailed, "could not run \(path): \(String(cString: strerror(errno)))")
    }

    /// Single-quotes a word for a POSIX shell unless it is plainly safe.
    public static func shellQuote(_ word: String) -> String {
        let safe = CharacterSet(
            charactersIn: "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789@%+=:,./-_")
        if !word.isEmpty, word.unicodeScalars.allSatisfy(safe.contains) { return word }
        return "'" + word.replacingOccurrences(of: "'", with: "'\\''") + "'"
    }

    /// The folder for control sockets: under the data folder when the socket path fits in sun_path (108
    /// bytes), else under /tmp, per user.
    public static func controlDirectory(paths: NimbusPaths) -> URL {
        let preferred = paths.data.appending(path: "ssh", directoryHint: .isDirectory)
        // %C expands to 40 hex digits; ssh adds a 17-character suffix while it creates the socket.
        if preferred.path.utf8.count + 1 + 40 + 17 < 104 { return preferred }
        return URL(fileURLWithPath: "/tmp/nimbus-ssh-\(getuid())", isDirectory: true)
    }
}
