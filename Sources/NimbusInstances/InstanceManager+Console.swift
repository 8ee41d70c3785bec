import Foundation
import NimbusCore
import NimbusMachines

#if canImport(Glibc)
    import Glibc
#endif

extension InstanceManager {
    /// What `name`'s guest has written to its serial console from byte `offset` of the log on, wherever the
    /// driver keeps the log (a remote libvirt host keeps its own), and the offset to read from next.
    public func serialLog(_ name: InstanceName, from offset: UInt64) async throws(NimbusError) -> SerialLog.Chunk {
        let machine = try store.requireExisting(name).machine
        guard let chunk = try await hypervisor.driver(machine).serialLog(of: machine, from: offset) else {
            throw NimbusError(.notFound, "\(name) has no serial log yet: it has not been started")
        }
        return chunk
    }

    /// The detach key: Ctrl-], as telnet and virsh console use.
    static let detachByte: UInt8 = 0x1d

    /// Attaches the terminal to the instance's serial console until Ctrl-] or until the guest stops.
    ///
    /// The relay runs on threads of its own: an interactive console does nothing else while attached, and
    /// both directions block (a console's `receive`, the terminal's poll).
    public func attachConsole(_ name: InstanceName) async throws {
        let dir = try store.requireExisting(name)
        let driver = hypervisor.driver(dir.machine)
        guard await driver.status(of: dir.machine).state != .stopped else {
            throw NimbusError(
                .invalidState,
                "\(name) is stopped: `nimbus start \(name)` first, or `nimbus logs \(name)` to read its log")
        }
        let console: any MachineConsole
        do {
            console = try await driver.openConsole(dir.machine)
        } catch {
            throw NimbusError(error.code, "could not attach to \(name)'s console: \(error.message)", cause: error)
        }
        FileHandle.standardError.write(Data("attached to \(name)'s console; Ctrl-] detaches\r\n".utf8))
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            Thread.detachNewThread {
                Self.relay(console)
                continuation.resume()
            }
        }
        FileHandle.standardError.write(Data("\r\ndetached\r\n".utf8))
    }

    /// Copies the terminal to the console and back, in raw mode, until Ctrl-] or the end of the stream.
    static func relay(_ console: any MachineConsole) {
        withRawTerminal { relayRaw(console, input: 0, output: 1) }
    }

    /// The guest's output on a thread of its own (a blocking receive), `input` on this one, polled with a
    /// timeout so the end of the stream (the guest stopped) is noticed without a key press.
    static func relayRaw(_ console: any MachineConsole, input: Int32, output: Int32) {
        let printer = Thread {
            var buffer = [UInt8](repeating: 0, count: 4096)
            while true {
                let count = buffer.withUnsafeMutableBytes { console.receive($0) }
                guard count > 0 else { break }
                _ = buffer.withUnsafeBytes { write(output, $0.baseAddress, count) }
            }
            console.close()
        }
        printer.start()
        var keyboard = [pollfd(fd: input, events: Int16(POLLIN), revents: 0)]
        var buffer = [UInt8](repeating: 0, count: 4096)
        while !printer.isFinished {
            guard poll(&keyboard, 1, 200) >= 0 else { break }
            guard keyboard[0].revents != 0 else { continue }
            let count = read(input, &buffer, buffer.count)
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
        while !printer.isFinished { usleep(1000) }
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
