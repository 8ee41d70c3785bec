import CLibvirt
import Foundation
import NimbusCore
import NimbusMachines

/// The machine's serial console as a libvirt stream (`virDomainOpenConsole`): what `virsh console` uses,
/// and it works the same on remote daemons, where there is no local pty to open.
///
/// `@unchecked Sendable`: one thread receives while another sends, which libvirt's blocking streams allow
/// (its RPC client passes the connection between waiting threads); `finished` is guarded by a lock.
public final class LibvirtConsole: MachineConsole, @unchecked Sendable {
    private let stream: virStreamPtr
    private let domain: LibvirtDomain
    private let lock = NSLock()
    private var finished = false

    init(stream: virStreamPtr, domain: LibvirtDomain) {
        self.stream = stream
        self.domain = domain
    }

    deinit {
        close()
        _ = libvirt.virStreamFree(stream)
    }

    /// Sends `bytes` to the guest's serial port; false once the stream has ended.
    public func send(_ bytes: UnsafeRawBufferPointer) -> Bool {
        var offset = 0
        while offset < bytes.count {
            guard let base = bytes.baseAddress else { return true }
            let sent = libvirt.virStreamSend(
                stream, base.advanced(by: offset).assumingMemoryBound(to: CChar.self), bytes.count - offset)
            guard sent > 0 else {
                libvirt.virResetLastError()
                return false
            }
            offset += Int(sent)
        }
        return true
    }

    /// Waits for what the guest prints; 0 at the end of the stream (the machine stopped, or `close`).
    public func receive(_ buffer: UnsafeMutableRawBufferPointer) -> Int {
        guard let base = buffer.baseAddress else { return 0 }
        let count = libvirt.virStreamRecv(stream, base.assumingMemoryBound(to: CChar.self), buffer.count)
        if count < 0 { libvirt.virResetLastError() }
        return max(0, Int(count))
    }

    /// Ends the stream, which wakes a thread waiting in `receive`.
    public func close() {
        lock.lock()
        defer { lock.unlock() }
        guard !finished else { return }
        finished = true
        if libvirt.virStreamAbort(stream) < 0 { libvirt.virResetLastError() }
    }
}

extension LibvirtDriver {
    /// Opens the serial console of the running machine in `directory`. `force` takes it over from another
    /// client (a `virsh console` left open), as libvirt allows one console client at a time.
    public func openConsole(_ directory: MachineDirectory, force: Bool) throws(NimbusError) -> LibvirtConsole {
        guard let record = Self.record(directory) else {
            throw NimbusError(.invalidState, "the machine in \(directory.url.path) has never run through libvirt")
        }
        let connection = try LibvirtConnection(uri: record.uri)
        guard let domain = try connection.domain(named: record.domain), domain.isActive else {
            throw NimbusError(
                .invalidState, "cannot open the console: the machine in \(directory.url.path) is not running")
        }
        try Self.checkOwnership(domain, directory: directory, uri: record.uri)
        guard let stream = libvirt.virStreamNew(connection.pointer, 0) else {
            let error = LibvirtError.last("virStreamNew")
            throw NimbusError(.processFailed, "libvirt could not open a stream: \(error.message)", cause: error)
        }
        let flags = force ? UInt32(VIR_DOMAIN_CONSOLE_FORCE.rawValue) : 0
        guard libvirt.virDomainOpenConsole(domain.pointer, nil, stream, flags) == 0 else {
            let error = LibvirtError.last("virDomainOpenConsole")
            _ = libvirt.virStreamFree(stream)
            throw NimbusError(
                .processFailed,
                "libvirt could not open the console of domain \(domain.name): \(error.message); `virsh -c \(record.uri) console \(domain.name)` is the same console",
                cause: error)
        }
        return LibvirtConsole(stream: stream, domain: domain)
    }
}
