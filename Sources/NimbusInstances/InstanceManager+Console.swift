import Foundation
import NimbusCore
import NimbusMachines

#if canImport(Glibc)
    import Glibc
#endif

extension InstanceManager {
    /// The detach key: Ctrl-], as telnet and virsh console use.
    static let detachByte: UInt8 = 0x1d

    /// Attaches the terminal to the instance's serial console until Ctrl-] or until the guest stops.
    ///
    /// The relay is a poll loop on a thread of its own: an interactive console does nothing else while
    /// attached, and poll on two descriptors is what a terminal relay is.
    public func attachConsole(_ name: InstanceName) async throws {
        let dir = try store.requireExisting(name)
        guard await hypervisor.status(of: dir.machine).state != .stopped else {
            throw NimbusError(
                .invalidState,
                "\(name) is stopped: `nimbus start \(name)` first, or `nimbus logs \(name)` to read its log")
        }
        if (try? store.loadSpec(name))?.driver == "libvirt" {
            try await attachLibvirtConsole(name, dir: dir)
            return
        }
        let socketPath = dir.machine.consoleSocket.path
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw NimbusError(.io, "could not open a socket for the console") }
        // sun_path holds 108 bytes; connect through /proc/self/fd when the folder's path is longer.
        let folder = open(dir.url.path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        defer { if folder >= 0 { close(folder) } }
        let reachable =
            socketPath.utf8.count < 100 ? socketPath : "/proc/self/fd/\(folder)/\(MachineDirectory.consoleSocketName)"
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { buffer in
            for (index, byte) in reachable.utf8.prefix(buffer.count - 1).enumerated() { buffer[index] = byte }
        }
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        guard connected == 0 else {
            close(fd)
            throw NimbusError(
                .io, "could not attach to \(name)'s console at \(socketPath): \(String(cString: strerror(errno)))")
        }
        FileHandle.standardError.write(Data("attached to \(name)'s console; Ctrl-] detaches\r\n".utf8))
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            Thread.detachNewThread {
                Self.relay(socket: fd)
                close(fd)
                continuation.resume()
            }
        }
        FileHandle.standardError.write(Data("\r\ndetached\r\n".utf8))
    }

    /// The libvirt console: a stream from `virDomainOpenConsole`, relayed like the QEMU socket.
    func attachLibvirtConsole(_ name: InstanceName, dir: InstanceDirectory) async throws {
        let driver = hypervisor.driver(dir.machine)
        guard let libvirt = driver as? LibvirtDriver else {
            throw NimbusError(.internalError, "\(name) is a libvirt instance without a libvirt driver")
        }
        let console = try libvirt.openConsole(dir.machine)
        FileHandle.standardError.write(Data("attached to \(name)'s console; Ctrl-] detaches\r\n".utf8))
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            Thread.detachNewThread {
                Self.relay(console)
                continuation.resume()
            }
        }
        FileHandle.standardError.write(Data("\r\ndetached\r\n".utf8))
    }

    /// Copies the terminal to the stream and back, in raw mode, until Ctrl-] or the end of the stream: the
    /// guest's output on a thread of its own (a blocking receive), the keyboard on this one.
    static func relay(_ console: LibvirtConsole) {
        withRawTerminal { relayRaw(console) }
    }

    private static func relayRaw(_ console: LibvirtConsole) {
        let output = Thread {
            var buffer = [UInt8](repeating: 0, count: 4096)
            while true {
                let count = buffer.withUnsafeMutableBytes { console.receive($0) }
                guard count > 0 else { break }
                _ = buffer.withUnsafeBytes { write(1, $0.baseAddress, count) }
            }
            console.close()
        }
        output.start()
        var input = [pollfd(fd: 0, events: Int16(POLLIN), revents: 0)]
        var buffer = [UInt8](repeating: 0, count: 4096)
        // Polled with a timeout, so the end of the stream (the guest stopped) is noticed without a key press.
        while !output.isFinished {
            guard poll(&input, 1, 200) >= 0 else { break }
            guard input[0].revents != 0 else { continue }
            let count = read(0, &buffer, buffer.count)
            guard count > 0 else { break }
            if let detach = buffer[..<count].firstIndex(of: detachByte) {
                if detach > 0 {
                    _ = buffer.withUnsafeBytes { console.send(UnsafeRawBufferPointer(rebasing: $0[..<detach])) }
                }
                break
            }
            guard buffer.withUnsafeBytes({ console.send(UnsafeRawBufferPointer(rebasing: $0[..<count])) }) else {
                break
            }
        }
        console.close()
    }

    /// Copies the terminal to the socket and back, with the terminal in raw mode, until Ctrl-] or EOF.
    static func relay(socket fd: Int32) {
        withRawTerminal { relayRaw(socket: fd) }
    }

    private static func relayRaw(socket fd: Int32) {
        var fds = [pollfd(fd: 0, events: Int16(POLLIN), revents: 0), pollfd(fd: fd, events: Int16(POLLIN), revents: 0)]
        var buffer = [UInt8](repeating: 0, count: 4096)
        while poll(&fds, 2, -1) >= 0 {
            if fds[1].revents != 0 {
                let count = read(fd, &buffer, buffer.count)
                guard count > 0 else { return }
                _ = write(1, buffer, count)
            }
            if fds[0].revents != 0 {
                let count = read(0, &buffer, buffer.count)
                guard count > 0 else { return }
                if let detach = buffer[..<count].firstIndex(of: detachByte) {
                    if detach > 0 { _ = write(fd, buffer, detach) }
                    return
                }
                _ = write(fd, buffer, count)
            }
        }
    }

    /// Runs `body` with standard input in raw mode when it is a terminal (every key goes through as typed,
    /// Ctrl-C included), and restores the terminal after.
    static func withRawTerminal(_ body: () -> Void) {
        var saved = termios()
        let isTerminal = isatty(0) == 1 && tcgetattr(0, &saved) == 0
        if isTerminal {
            var raw = saved
            cfmakeraw(&raw)
            tcsetattr(0, TCSANOW, &raw)
        }
        defer { if isTerminal { tcsetattr(0, TCSANOW, &saved) } }
        body()
    }
}
