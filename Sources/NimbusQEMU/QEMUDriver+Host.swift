import Foundation
import NimbusCore
import NimbusMachines
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// What the QEMU driver says about this host, its console, and what its machines leave behind. Every
/// file of a QEMU machine is in its folder: no storage or definitions elsewhere.
extension QEMUDriver {
    public var hostLabel: String { "local" }

    /// MemTotal from /proc/meminfo.
    public func hostMemory() async throws(NimbusError) -> ByteSize? {
        guard let text = try? String(contentsOfFile: "/proc/meminfo", encoding: .utf8),
            let line = text.split(separator: "\n").first(where: { $0.hasPrefix("MemTotal:") }),
            let kib = line.split(separator: " ").dropFirst().first.flatMap({ UInt64($0) })
        else { return nil }
        return ByteSize(bytes: kib * 1024)
    }

    public func serialLog(of directory: MachineDirectory, from offset: UInt64) async throws(NimbusError)
        -> SerialLog.Chunk?
    {
        try SerialLog.read(directory.serialLog, from: offset)
    }
    public var storage: (any MachineStorage)? { nil }
    public var definitions: (any MachineDefinitions)? { nil }
    public var networks: (any MachineNetworks)? { QEMUNetworks() }

    /// QEMU must be installed; everything else is found at start, where its absence is named.
    public func checkReachable() throws(NimbusError) {
        guard ProgramRunner.find(executable) != nil else { throw Self.missing(executable) }
    }

    /// virtiofs needs a virtiofsd Nimbus can run; 9p is QEMU's own.
    public func shareProblem(_ transport: MachineConfig.Share.Transport) -> String? {
        transport == .virtiofs ? Virtiofsd.unavailableReason() : nil
    }

    /// Nothing but the process: the folder goes with everything in it.
    public func forget(_ directory: MachineDirectory) async throws(NimbusError) {
        try await kill(directory)
    }

    public func hostFindings() -> [HostFinding] {
        var findings: [HostFinding] = []
        // The system's qemu-system-x86_64 is doctor's own check; another one named by NIMBUS_QEMU is this.
        if executable != Self.systemProgram {
            let runnable = ProgramRunner.find(executable) != nil
            findings.append(
                HostFinding(
                    subject: "NIMBUS_QEMU",
                    detail: runnable ? executable : Self.missing(executable).message, ok: runnable))
        }
        if let reason = Virtiofsd.unavailableReason() {
            findings.append(
                HostFinding(
                    subject: "virtiofsd", detail: "\(reason); --mount falls back to 9p, which many cloud kernels lack",
                    ok: false, warning: true))
        } else {
            findings.append(HostFinding(subject: "virtiofsd", detail: Virtiofsd.program() ?? "", ok: true))
        }
        return findings
    }

    /// QEMU processes whose `-pidfile` is in a folder under `instances`, and virtiofsd processes whose
    /// `Virtiofsd.ownerVariable` names one, where that folder holds no machine (one pass over /proc).
    public func orphans(under instances: URL, isMachineFolder: (String) -> Bool) -> [OrphanProcess] {
        let prefix = instances.path + "/"
        let marker = Array("\(Virtiofsd.ownerVariable)=".utf8)
        var orphans: [OrphanProcess] = []
        for entry in (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? [] {
            guard let pid = Int32(entry), let command = FileManager.default.contents(atPath: "/proc/\(entry)/cmdline")
            else { continue }
            let arguments = command.split(separator: 0).map { String(decoding: $0, as: UTF8.self) }
            var found: OrphanProcess?
            if arguments.first?.contains("qemu-system") == true,
                let pidfile = zip(arguments, arguments.dropFirst()).first(where: { $0.0 == "-pidfile" })?.1
            {
                found = OrphanProcess(
                    program: "QEMU", pid: pid, folder: (pidfile as NSString).deletingLastPathComponent)
            } else if arguments.first?.contains("virtiofsd") == true,
                let environment = FileManager.default.contents(atPath: "/proc/\(entry)/environ"),
                let variable = environment.split(separator: 0).first(where: { $0.starts(with: marker) })
            {
                found = OrphanProcess(
                    program: "virtiofsd", pid: pid,
                    folder: String(decoding: variable.dropFirst(marker.count), as: UTF8.self))
            }
            guard let found, found.folder.hasPrefix(prefix), PIDFile.isAlive(pid), !isMachineFolder(found.folder)
            else { continue }
            orphans.append(found)
        }
        return orphans
    }

    public func leftovers(of directory: MachineDirectory) -> [MachineLeftover] {
        var leftovers: [MachineLeftover] = []
        let stale = [directory.pidFile, directory.qmpSocket].filter { FileManager.default.fileExists(atPath: $0.path) }
        if !stale.isEmpty {
            leftovers.append(
                MachineLeftover(
                    "stale \(stale.map(\.lastPathComponent).joined(separator: " and ")) of a QEMU that is gone",
                    clearedAs: "removed"
                ) {
                    for file in stale { try? FileManager.default.removeItem(at: file) }
                })
        }
        let helpers = Virtiofsd.livePIDs(in: directory)
        if !helpers.isEmpty {
            leftovers.append(
                MachineLeftover(
                    "virtiofsd (pid \(helpers.map(String.init).joined(separator: ", "))) runs with no QEMU to serve (a start was interrupted)",
                    clearedAs: "ended"
                ) {
                    _ = Virtiofsd.stopAll(in: directory)
                })
        }
        return leftovers
    }

    public func helperPIDs(of directory: MachineDirectory) -> [Int32] { Virtiofsd.livePIDs(in: directory) }

    /// QEMU's console socket (a chardev server in the folder).
    public func openConsole(_ directory: MachineDirectory) async throws(NimbusError) -> any MachineConsole {
        guard QEMUProcess.find(in: directory) != nil else {
            throw NimbusError(
                .invalidState, "cannot open the console: the machine in \(directory.url.path) is not running")
        }
        let socketPath = directory.consoleSocket.path
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw NimbusError(.io, "could not open a socket for the console") }
        // sun_path holds 108 bytes; connect through /proc/self/fd when the folder's path is longer.
        let folder = open(directory.url.path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        defer { if folder >= 0 { close(folder) } }
        let reachable =
            socketPath.utf8.count < 100
            ? socketPath : "/proc/self/fd/\(folder)/\(MachineDirectory.consoleSocketName)"
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { buffer in
            for (index, byte) in reachable.utf8.prefix(buffer.count - 1).enumerated() { buffer[index] = byte }
        }
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        guard connected == 0 else {
            let reason = String(cString: strerror(errno))
            close(fd)
            throw NimbusError(.io, "could not attach to the console at \(socketPath): \(reason)")
        }
        return SocketConsole(descriptor: fd)
    }
}

/// A console on a connected stream socket. `close` shuts the socket down, which wakes a `receive`
/// blocked on another thread; the descriptor itself is closed with the console, so no other thread can
/// be reading a reused descriptor number.
final class SocketConsole: MachineConsole {
    private let descriptor: Int32
    private let closed = Mutex(false)

    init(descriptor: Int32) { self.descriptor = descriptor }

    deinit { Glibc.close(descriptor) }

    func send(_ bytes: UnsafeRawBufferPointer) -> Bool {
        var offset = 0
        while offset < bytes.count, let base = bytes.baseAddress {
            let sent = write(descriptor, base.advanced(by: offset), bytes.count - offset)
            guard sent > 0 else { return false }
            offset += sent
        }
        return true
    }

    func receive(_ buffer: UnsafeMutableRawBufferPointer) -> Int {
        max(0, read(descriptor, buffer.baseAddress, buffer.count))
    }

    func close() {
        let first = closed.withLock { closed in
            defer { closed = true }
            return !closed
        }
        if first { shutdown(descriptor, Int32(SHUT_RDWR)) }
    }
}
