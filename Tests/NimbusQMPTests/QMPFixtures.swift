import Foundation
import NimbusCore
import NimbusQMP
import NimbusTestSupport

#if canImport(Glibc)
    import Glibc
#endif

/// A real QEMU with no machine at all (`-machine none`): it speaks QMP, keeps block devices and takes
/// snapshots, and starts in milliseconds. Killed when the body ends.
struct BareQEMU {
    let directory: TemporaryDirectory
    let socket: String
    let pid: Int32

    static func with<T>(_ body: (BareQEMU) async throws -> T) async throws -> T {
        let directory = try TemporaryDirectory("nimbus-qmp")
        defer { directory.remove() }
        let disk = directory.url.appending(path: "disk.qcow2").path
        let socket = directory.url.appending(path: "qmp.sock").path
        let pidfile = directory.url.appending(path: "qemu.pid").path
        try await ProgramRunner.run("qemu-img", ["create", "-q", "-f", "qcow2", disk, "64M"])
        try await ProgramRunner.run(
            "qemu-system-x86_64",
            [
                "-nodefaults", "-no-user-config", "-display", "none", "-machine", "none",
                "-drive", "if=none,id=disk0,format=qcow2,file=\(disk)",
                "-chardev", "socket,id=qmp,path=\(socket),server=on,wait=off", "-mon", "chardev=qmp,mode=control",
                "-daemonize", "-pidfile", pidfile,
            ])
        let text = try String(contentsOfFile: pidfile, encoding: .utf8)
        let pid = Int32(text.trimmingCharacters(in: .whitespacesAndNewlines)) ?? 0
        defer { if pid > 0 { kill(pid, SIGKILL) } }
        return try await body(BareQEMU(directory: directory, socket: socket, pid: pid))
    }
}

/// The far end of a socketpair, scripted by a test: the in-memory QMP peer for what real QEMU will not
/// do on demand (split a reply, put garbage on the wire, stop in the middle of a message).
final class ScriptedPeer: Sendable {
    let descriptor: Int32

    /// Makes the pair; the client end is returned for `QMPClient.connect(descriptor:)`.
    static func make() throws -> (peer: ScriptedPeer, clientDescriptor: Int32) {
        var fds: [Int32] = [0, 0]
        guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &fds) == 0 else {
            throw POSIXError(.EIO)
        }
        return (ScriptedPeer(descriptor: fds[0]), fds[1])
    }

    private init(descriptor: Int32) { self.descriptor = descriptor }

    static let greeting =
        #"{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": "scripted"}, "capabilities": ["oob"]}}"#

    func write(_ text: String) {
        var bytes = Array(text.utf8)
        var offset = 0
        while offset < bytes.count {
            let written = bytes.withUnsafeMutableBytes {
                Glibc.write(descriptor, $0.baseAddress! + offset, $0.count - offset)
            }
            if written <= 0 { return }
            offset += written
        }
    }

    /// Reads one line the client sent (blocking; the peer runs on a thread of its own).
    func readLine() -> String {
        var line: [UInt8] = []
        var byte: UInt8 = 0
        while read(descriptor, &byte, 1) == 1 {
            if byte == UInt8(ascii: "\n") { break }
            line.append(byte)
        }
        return String(decoding: line, as: UTF8.self)
    }

    /// The `id` of a request line.
    func id(of request: String) -> String {
        let value = try? JSONDecoder().decode(QMPValue.self, from: Data(request.utf8))
        return value?["id"]?.stringValue ?? ""
    }

    /// Greets and answers `qmp_capabilities`.
    func handshake() {
        write(Self.greeting + "\r\n")
        let request = readLine()
        write(#"{"return": {}, "id": "\#(id(of: request))"}"# + "\r\n")
    }

    func close() { Glibc.close(descriptor) }

    /// Runs `script` on a thread of its own (its reads block), and returns when it is done.
    func run(_ script: @escaping @Sendable (ScriptedPeer) -> Void) -> Task<Void, Never> {
        Task {
            await withCheckedContinuation { (done: CheckedContinuation<Void, Never>) in
                let thread = Thread { [self] in
                    script(self)
                    done.resume()
                }
                thread.start()
            }
        }
    }
}
