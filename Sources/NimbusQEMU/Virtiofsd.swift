import Foundation
import NimbusCore
import NimbusMachines

#if canImport(Glibc)
    import Glibc
#endif

/// The virtiofsd processes that serve a machine's virtiofs shares, one per share, owned by the machine's
/// folder the way QEMU is: started just before QEMU, each with a pidfile Nimbus writes and checks against
/// /proc, its vhost-user socket and its log in the folder.
///
/// A virtiofsd ends by itself when QEMU closes its socket (a stop, a crash, a `kill -9`), so a machine
/// leaves none behind; one that never got its QEMU (a start that failed or was killed between the two) is
/// ended by the next start, stop or delete, and `doctor` finds any that outlive their machine.
///
/// Written by hand: swift-subprocess waits for every child it starts, and virtiofsd must outlive the
/// `nimbus` that starts it, in a session of its own.
public enum Virtiofsd {
    /// The virtiofsd program: `NIMBUS_VIRTIOFSD`, else the one Debian's QEMU ships in /usr/lib/qemu (the one
    /// the tests run), else the standalone (Rust) virtiofsd of Debian 13's `virtiofsd` package; for a user
    /// other than root the standalone one first, as QEMU's needs root. nil when none is installed. The
    /// standalone one documents `--fd` and the `-o source=,cache=` compatibility options Nimbus passes, but
    /// only QEMU's has been run here (bookworm has no standalone package).
    public static func program(environment: [String: String] = ProcessInfo.processInfo.environment) -> String? {
        if let path = environment["NIMBUS_VIRTIOFSD"], !path.isEmpty {
            return FileManager.default.isExecutableFile(atPath: path) ? path : nil
        }
        let qemu = "/usr/lib/qemu/virtiofsd"
        let standalone = "/usr/libexec/virtiofsd"
        return (geteuid() == 0 ? [qemu, standalone] : [standalone, qemu]).first {
            FileManager.default.isExecutableFile(atPath: $0)
        }
    }

    /// Why virtiofs cannot serve shares on this host, or nil when it can: virtiofsd is missing, or it needs
    /// root (Debian's QEMU virtiofsd sandboxes itself in namespaces, which takes CAP_SYS_ADMIN).
    public static func unavailableReason() -> String? {
        guard let program = program() else {
            return "virtiofsd is not installed (`apt-get install qemu-system-x86` ships /usr/lib/qemu/virtiofsd)"
        }
        if program == "/usr/lib/qemu/virtiofsd", geteuid() != 0 {
            return
                "QEMU's virtiofsd (\(program)) runs only as root; `apt-get install virtiofsd` gives one that does not"
        }
        return nil
    }

    /// Starts one virtiofsd per virtiofs share of `config`, after ending any the folder still has, each on a
    /// socket Nimbus listens on for it, so QEMU can connect as soon as this returns. On failure none is left
    /// running.
    static func startAll(_ config: MachineConfig, in directory: MachineDirectory) async throws(NimbusError) {
        stopAll(in: directory)
        let shares = config.shares.enumerated().filter { $0.element.transport == .virtiofs }
        guard !shares.isEmpty else { return }
        guard let program = program() else {
            throw NimbusError(
                .unsupported,
                "machine \(config.name) shares folders over virtiofs, and virtiofsd is not installed: `apt-get install qemu-system-x86` (it ships /usr/lib/qemu/virtiofsd)"
            )
        }
        do {
            for (index, share) in shares {
                try await start(program, share: share, index: index, in: directory)
            }
        } catch {
            stopAll(in: directory)
            throw error
        }
    }

    /// The pids of the folder's live virtiofsd processes.
    public static func livePIDs(in directory: MachineDirectory) -> [Int32] {
        pidFiles(in: directory).compactMap { process(named: $0, in: directory) }
    }

    /// Ends every virtiofsd of the folder (SIGTERM, then SIGKILL) and removes their pidfiles and sockets.
    /// Returns the pids it ended.
    @discardableResult
    public static func stopAll(in directory: MachineDirectory) -> [Int32] {
        var ended: [Int32] = []
        for file in pidFiles(in: directory) {
            if let pid = process(named: file, in: directory) {
                kill(pid, SIGTERM)
                if !waitForExit(pid, timeout: .seconds(2)) {
                    kill(pid, SIGKILL)
                    _ = waitForExit(pid, timeout: .seconds(5))
                }
                ended.append(pid)
            }
            unlink(file.path)
            if let index = index(of: file) { unlink(directory.virtiofsSocket(index).path) }
        }
        return ended
    }

    // MARK: -

    private static func start(_ program: String, share: MachineConfig.Share, index: Int, in directory: MachineDirectory)
        async throws(NimbusError)
    {
        let socket = directory.virtiofsSocket(index)
        unlink(socket.path)
        guard FileManager.default.fileExists(atPath: share.hostPath) else {
            throw NimbusError(
                .invalidArgument, "the shared folder \(share.hostPath) does not exist: create it, or remove the mount")
        }
        // Nimbus binds the listening socket and hands it over (`--fd`), as libvirt does: given a socket path
        // instead, QEMU's virtiofsd locks a pidfile named after that path in /run/virtiofsd, so two instances'
        // `virtiofs0.sock` (relative, to stay within sun_path whatever the folder's depth) would collide.
        // `cache=auto`: the guest caches with a timeout, as QEMU's 9p did not at all.
        let listener = try listen(on: MachineDirectory.virtiofsSocketName(index), in: directory)
        defer { close(listener) }
        let arguments = [
            program, "--fd=\(inheritedSocket)", "-o", "source=\(share.hostPath)", "-o", "cache=auto",
        ]
        let pid = try spawnDetached(
            arguments, in: directory, log: directory.virtiofsLog(index), socket: listener)
        do {
            try AtomicFile.write(Data("\(pid)\n".utf8), to: directory.virtiofsPIDFile(index))
        } catch {
            kill(pid, SIGKILL)
            throw NimbusError(.io, "could not write \(directory.virtiofsPIDFile(index).path)", cause: error)
        }
        // virtiofsd checks its options and the shared folder at once, then waits for QEMU on the socket.
        try? await Task.sleep(for: .milliseconds(20))
        guard PIDFile.isAlive(pid) else {
            let log = (try? String(contentsOf: directory.virtiofsLog(index), encoding: .utf8)) ?? ""
            throw NimbusError(
                .processFailed,
                "virtiofsd could not serve \(share.hostPath): \(log.trimmingCharacters(in: .whitespacesAndNewlines))")
        }
    }

    /// The descriptor number virtiofsd gets its listening socket as.
    private static let inheritedSocket: Int32 = 3

    /// A Unix socket listening at `name` in the machine's folder (mode 0600), bound through
    /// /proc/self/fd/N/`name` so that a folder deeper than sun_path's 108 bytes still works.
    private static func listen(on name: String, in directory: MachineDirectory) throws(NimbusError) -> Int32 {
        let path = directory.url.appending(path: name).path
        unlink(path)
        let folder = open(directory.url.path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard folder >= 0 else {
            throw NimbusError(.io, "could not open \(directory.url.path): \(String(cString: strerror(errno)))")
        }
        defer { close(folder) }
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw NimbusError(.io, "could not create a socket: \(String(cString: strerror(errno)))") }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array("/proc/self/fd/\(folder)/\(name)".utf8)
        withUnsafeMutableBytes(of: &address.sun_path) { buffer in
            buffer.copyBytes(from: bytes.prefix(buffer.count - 1))
            buffer[min(bytes.count, buffer.count - 1)] = 0
        }
        let bound = withUnsafePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) == 0
            }
        }
        guard bound, chmod(path, 0o600) == 0, Glibc.listen(fd, 1) == 0 else {
            let reason = String(cString: strerror(errno))
            close(fd)
            throw NimbusError(.io, "could not listen on \(path): \(reason)")
        }
        return fd
    }

    /// Starts `arguments` in the machine's folder in a session of its own (no terminal, no signals from the
    /// caller's), with stdin from /dev/null, stdout and stderr written to `log`, `socket` as descriptor 3,
    /// and `ownerVariable` naming the folder; does not wait for it.
    private static func spawnDetached(_ arguments: [String], in directory: MachineDirectory, log: URL, socket: Int32)
        throws(NimbusError) -> Int32
    {
        var actions = posix_spawn_file_actions_t()
        var attributes = posix_spawnattr_t()
        posix_spawn_file_actions_init(&actions)
        posix_spawnattr_init(&attributes)
        defer {
            posix_spawn_file_actions_destroy(&actions)
            posix_spawnattr_destroy(&attributes)
        }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, log.path, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        posix_spawn_file_actions_adddup2(&actions, 1, 2)
        // dup2 clears close-on-exec on the copy: the socket reaches virtiofsd as descriptor 3, nothing else.
        posix_spawn_file_actions_adddup2(&actions, socket, inheritedSocket)
        _ = addChdir(&actions, directory.url.path)
        posix_spawnattr_setflags(&attributes, Int16(spawnSetSID | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))
        var noSignals = sigset_t()
        sigemptyset(&noSignals)
        posix_spawnattr_setsigmask(&attributes, &noSignals)
        var defaults = sigset_t()
        sigfillset(&defaults)
        posix_spawnattr_setsigdefault(&attributes, &defaults)

        var environment = ProcessInfo.processInfo.environment
        environment[ownerVariable] = directory.url.path
        var argv: [UnsafeMutablePointer<CChar>?] = arguments.map { strdup($0) } + [nil]
        var envp: [UnsafeMutablePointer<CChar>?] = environment.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer { for pointer in argv + envp { free(pointer) } }
        var pid: pid_t = 0
        let result = posix_spawn(&pid, arguments[0], &actions, &attributes, &argv, &envp)
        guard result == 0 else {
            throw NimbusError(
                .processFailed, "could not start \(arguments[0]): \(String(cString: strerror(result)))")
        }
        // The child is this process's until it ends: a thread of its own collects its exit status then, so a
        // long-lived process using the library keeps no zombie (the CLI exits long before, and init reaps).
        let child = pid
        Thread.detachNewThread {
            var status: Int32 = 0
            while waitpid(child, &status, 0) < 0, errno == EINTR {}
        }
        return child
    }

    /// The environment variable that ties a virtiofsd to its folder: its socket path is relative, and its
    /// working folder changes once it sandboxes itself, so neither tells.
    public static let ownerVariable = "NIMBUS_MACHINE_FOLDER"

    /// The live virtiofsd a pidfile of the folder names, checked by the owner variable in its environment.
    private static func process(named file: URL, in directory: MachineDirectory) -> Int32? {
        guard let pid = PIDFile(file.path).livePID,
            let data = FileManager.default.contents(atPath: "/proc/\(pid)/environ"),
            data.split(separator: 0).contains(where: { $0.elementsEqual("\(ownerVariable)=\(directory.url.path)".utf8) }
            )
        else { return nil }
        return pid
    }

    private static func pidFiles(in directory: MachineDirectory) -> [URL] {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: directory.url.path)) ?? []
        return names.filter { $0.hasPrefix("virtiofsd") && $0.hasSuffix(".pid") }.sorted()
            .map { directory.url.appending(path: $0) }
    }

    private static func index(of pidFile: URL) -> Int? {
        Int(pidFile.lastPathComponent.dropFirst("virtiofsd".count).dropLast(".pid".count))
    }

    private static func waitForExit(_ pid: Int32, timeout: Duration) -> Bool {
        let deadline = ContinuousClock.now + timeout
        while PIDFile.isAlive(pid) {
            guard ContinuousClock.now < deadline else { return false }
            usleep(10_000)
        }
        return true
    }

    // glibc's GNU extensions to posix_spawn (glibc 2.26 and 2.29), which Swift's Glibc module does not
    // import: they are declared only under _GNU_SOURCE.
    /// `POSIX_SPAWN_SETSID` from glibc's spawn.h: the child calls setsid().
    private static let spawnSetSID: Int32 = 0x80

    @_silgen_name("posix_spawn_file_actions_addchdir_np")
    private static func addChdir(
        _ actions: UnsafeMutablePointer<posix_spawn_file_actions_t>, _ path: UnsafePointer<CChar>
    )
        -> Int32
}
