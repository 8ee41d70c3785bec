import CLibvirt
import Foundation
import NimbusCore
import NimbusMachines
import Synchronization

/// One open connection to a libvirt daemon (`virConnectPtr`), closed when released.
///
/// `@unchecked Sendable`: libvirt connections are thread-safe once `virInitialize` ran (libvirt's
/// "Thread safety" guarantee: a `virConnectPtr` may be used from several threads at once), and the
/// pointer itself is never changed after `init`.
final class LibvirtConnection: @unchecked Sendable {
    let pointer: virConnectPtr
    let uri: String

    /// libvirt is loaded (see CLibvirt.h) and initialised once per process, and its default error handler
    /// (which prints every error on stderr) is replaced by one that keeps quiet: errors reach users through
    /// `LibvirtError`.
    private static let initialized: Result<Void, NimbusError> = {
        var reason: UnsafePointer<CChar>?
        guard nimbus_libvirt_load(&reason) != nil else {
            return .failure(
                NimbusError(
                    .unsupported,
                    "libvirt is not installed on this host (\(reason.map { String(cString: $0) } ?? "libvirt.so.0 did not load")): install it (apt-get install libvirt0, and libvirt-daemon-system for a daemon on this host), or use --driver qemu"
                ))
        }
        guard libvirt.virInitialize() == 0 else {
            return .failure(NimbusError(.internalError, "libvirt could not be initialised (virInitialize failed)"))
        }
        libvirt.virSetErrorFunc(nil) { _, _ in }
        // libvirt's RPC client writes to its socket without MSG_NOSIGNAL: a daemon restarted mid-call would
        // end this process with SIGPIPE instead of failing the call (virsh ignores it for the same reason).
        signal(SIGPIPE, SIG_IGN)
        return .success(())
    }()

    /// Connections opened outside the libvirt executors, by URI: on the cooperative pool, where a blocking
    /// call stalls other tasks. The driver's entry points never open one there (`LibvirtExecutor`); tests
    /// check that they do not.
    static let openedOffExecutor = Mutex<[String: Int]>([:])

    /// Opens `uri`; every way that fails becomes a NimbusError that says what to do.
    init(uri: String) throws(NimbusError) {
        try Self.initialized.get()
        try Self.checkSyntax(uri)
        if LibvirtExecutor.current == nil { Self.openedOffExecutor.withLock { $0[uri, default: 0] += 1 } }
        guard let pointer = libvirt.virConnectOpen(uri) else {
            throw Self.connectError(LibvirtError.last("virConnectOpen"), uri: uri)
        }
        self.pointer = pointer
        self.uri = uri
    }

    deinit { _ = libvirt.virConnectClose(pointer) }

    /// A URI libvirt would take: `driver[+transport]://[user@][host][:port]/path[?query]`.
    static func checkSyntax(_ uri: String) throws(NimbusError) {
        let parsed = URLComponents(string: uri)
        guard let parsed, let scheme = parsed.scheme, !scheme.isEmpty, uri.contains("://"),
            scheme.range(of: "^[a-z][a-z0-9]*(\\+[a-z0-9]+)?$", options: .regularExpression) != nil
        else {
            throw NimbusError(
                .invalidArgument,
                "libvirt URI \"\(uri)\" does not parse: write it like qemu:///system, qemu:///session, qemu+ssh://user@host/system or qemu+tcp://host/system"
            )
        }
    }

    /// The message for a failed `virConnectOpen`, by libvirt's error number and errno.
    static func connectError(_ error: LibvirtError, uri: String) -> NimbusError {
        let local = URLComponents(string: uri)?.host.map(\.isEmpty) ?? true
        if error.matches(VIR_ERR_SYSTEM_ERROR) || error.matches(VIR_ERR_NO_CONNECT) {
            switch error.systemErrno {
            case EACCES, EPERM:
                return NimbusError(
                    .unsupported,
                    "permission denied on libvirt's socket for \(uri): run as root, add your user to the libvirt group (`adduser $USER libvirt`, then log in again), or use qemu:///session (libvirt: \(error.message))",
                    cause: error)
            case ENOENT, ECONNREFUSED:
                let start =
                    local
                    ? "start it with `systemctl start libvirtd`, or without systemd as root with `virtlogd -d && libvirtd -d`"
                    : "start libvirtd on that host and check that it listens (libvirtd --listen, or the libvirtd-tcp.socket unit)"
                return NimbusError(
                    .unsupported, "libvirtd is not running for \(uri): \(start) (libvirt: \(error.message))",
                    cause: error)
            default:
                break
            }
        }
        // A remote host that is down or unreachable: the socket's errno (qemu+tcp), or ssh's own words (qemu+ssh).
        let silent =
            [EHOSTUNREACH, ENETUNREACH, ETIMEDOUT, EHOSTDOWN].contains(error.systemErrno)
            || ["No route to host", "timed out", "Network is unreachable"].contains { error.message.contains($0) }
        if !local, silent, let host = LibvirtRemote.host(of: uri) {
            return NimbusError(
                .network,
                "libvirt host \(host) does not answer (\(uri)): check the address, that the host is up and reachable from here, and that libvirtd (or sshd, for qemu+ssh) listens there (libvirt: \(error.message))",
                cause: error)
        }
        if error.matches(VIR_ERR_NO_CONNECT) || error.matches(VIR_ERR_INVALID_ARG) {
            return NimbusError(
                .invalidArgument,
                "libvirt cannot use URI \"\(uri)\": \(error.message); write it like qemu:///system or qemu+ssh://user@host/system",
                cause: error)
        }
        if error.matches(VIR_ERR_AUTH_FAILED) {
            return NimbusError(
                .unsupported, "libvirt refused the credentials for \(uri): \(error.message)", cause: error)
        }
        return NimbusError(.network, "could not connect to libvirt at \(uri): \(error.message)", cause: error)
    }

    /// The running or defined domain named `name`, nil when there is none.
    func domain(named name: String) throws(NimbusError) -> LibvirtDomain? {
        guard let domain = libvirt.virDomainLookupByName(pointer, name) else {
            let error = LibvirtError.last("virDomainLookupByName")
            if error.matches(VIR_ERR_NO_DOMAIN) { return nil }
            throw NimbusError(
                .network, "libvirt at \(uri) could not look up domain \(name): \(error.message)", cause: error)
        }
        return LibvirtDomain(domain, connection: self, name: name)
    }

    /// Every domain of the daemon, running or defined.
    func allDomains() throws(NimbusError) -> [LibvirtDomain] {
        var list: UnsafeMutablePointer<virDomainPtr?>?
        let count = libvirt.virConnectListAllDomains(pointer, &list, 0)
        guard count >= 0, let list else {
            let error = LibvirtError.last("virConnectListAllDomains")
            throw NimbusError(.network, "libvirt at \(uri) could not list its domains: \(error.message)", cause: error)
        }
        defer { free(list) }
        return (0..<Int(count)).compactMap { index in
            guard let domain = list[index] else { return nil }
            let name = libvirt.virDomainGetName(domain).map { String(cString: $0) } ?? ""
            return LibvirtDomain(domain, connection: self, name: name)
        }
    }
}

/// A domain handle (`virDomainPtr`), freed when released.
///
/// `@unchecked Sendable` for the same reason as `LibvirtConnection`: libvirt objects are thread-safe, and
/// the handle keeps its connection alive.
final class LibvirtDomain: @unchecked Sendable {
    let pointer: virDomainPtr
    let connection: LibvirtConnection
    let name: String

    init(_ pointer: virDomainPtr, connection: LibvirtConnection, name: String) {
        self.pointer = pointer
        self.connection = connection
        self.name = name
    }

    deinit { _ = libvirt.virDomainFree(pointer) }

    /// Nimbus's metadata element, nil when the domain has none (it is not Nimbus's).
    var metadata: LibvirtDomainXML.Metadata? {
        guard
            let text = libvirt.virDomainGetMetadata(
                pointer, Int32(VIR_DOMAIN_METADATA_ELEMENT.rawValue), LibvirtDomainXML.metadataNamespace, 0)
        else {
            libvirt.virResetLastError()
            return nil
        }
        defer { free(text) }
        return LibvirtDomainXML.Metadata(element: String(cString: text))
    }

    /// libvirt's state and its reason code.
    func state() throws(NimbusError) -> (state: virDomainState, reason: Int32) {
        var state: Int32 = 0
        var reason: Int32 = 0
        guard libvirt.virDomainGetState(pointer, &state, &reason, 0) == 0 else {
            let error = LibvirtError.last("virDomainGetState")
            throw NimbusError(
                .network, "libvirt could not read the state of domain \(name): \(error.message)", cause: error)
        }
        return (virDomainState(rawValue: UInt32(bitPattern: state)), reason)
    }

    /// The domain's UUID, which a re-definition must repeat.
    var uuid: String? {
        var buffer = [CChar](repeating: 0, count: Int(VIR_UUID_STRING_BUFLEN))
        guard libvirt.virDomainGetUUIDString(pointer, &buffer) == 0 else {
            libvirt.virResetLastError()
            return nil
        }
        return String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// The domain's XML (the inactive definition with `inactive`).
    func xml(inactive: Bool = false) -> String? {
        let flags = inactive ? UInt32(VIR_DOMAIN_XML_INACTIVE.rawValue) : 0
        guard let text = libvirt.virDomainGetXMLDesc(pointer, flags) else {
            libvirt.virResetLastError()
            return nil
        }
        defer { free(text) }
        return String(cString: text)
    }

    /// Whether the domain runs (a shut-off persistent domain is defined but not active).
    var isActive: Bool {
        let active = libvirt.virDomainIsActive(pointer)
        if active < 0 { libvirt.virResetLastError() }
        return active == 1
    }

    /// Runs a libvirt call that returns 0 on success, turning failure into a NimbusError about `action`.
    func call(_ action: String, _ function: String, _ body: (virDomainPtr) -> Int32) throws(NimbusError) {
        guard body(pointer) == 0 else {
            let error = LibvirtError.last(function)
            let code: NimbusError.Code = error.matches(VIR_ERR_OPERATION_INVALID) ? .invalidState : .processFailed
            throw NimbusError(code, "libvirt could not \(action) domain \(name): \(error.message)", cause: error)
        }
    }
}

/// libvirt's functions, from the table CLibvirt loaded. Every call comes after a `LibvirtConnection` was
/// opened, which loads the library or throws: reaching here without it is a bug in Nimbus.
var libvirt: NimbusLibvirt {
    var reason: UnsafePointer<CChar>?
    guard let table = nimbus_libvirt_load(&reason) else {
        preconditionFailure("libvirt called before a LibvirtConnection loaded it")
    }
    return table.pointee
}
