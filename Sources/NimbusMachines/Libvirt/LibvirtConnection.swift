import CLibvirt
import Foundation
import NimbusCore

/// One open connection to a libvirt daemon (`virConnectPtr`), closed when released.
///
/// `@unchecked Sendable`: libvirt connections are thread-safe once `virInitialize` ran (libvirt's
/// "Thread safety" guarantee: a `virConnectPtr` may be used from several threads at once), and the
/// pointer itself is never changed after `init`.
final class LibvirtConnection: @unchecked Sendable {
    let pointer: virConnectPtr
    let uri: String

    /// libvirt is initialised once per process, and its default error handler (which prints every error on
    /// stderr) is replaced by one that keeps quiet: errors reach users through `LibvirtError`.
    private static let initialized: Bool = {
        guard virInitialize() == 0 else { return false }
        virSetErrorFunc(nil) { _, _ in }
        // libvirt's RPC client writes to its socket without MSG_NOSIGNAL: a daemon restarted mid-call would
        // end this process with SIGPIPE instead of failing the call (virsh ignores it for the same reason).
        signal(SIGPIPE, SIG_IGN)
        return true
    }()

    /// Opens `uri`; every way that fails becomes a NimbusError that says what to do.
    init(uri: String) throws(NimbusError) {
        guard Self.initialized else {
            throw NimbusError(.internalError, "libvirt could not be initialised (virInitialize failed)")
        }
        try Self.checkSyntax(uri)
        guard let pointer = virConnectOpen(uri) else {
            throw Self.connectError(LibvirtError.last("virConnectOpen"), uri: uri)
        }
        self.pointer = pointer
        self.uri = uri
    }

    deinit { virConnectClose(pointer) }

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
        guard let domain = virDomainLookupByName(pointer, name) else {
            let error = LibvirtError.last("virDomainLookupByName")
            if error.matches(VIR_ERR_NO_DOMAIN) { return nil }
            throw NimbusError(
                .network, "libvirt at \(uri) could not look up domain \(name): \(error.message)", cause: error)
        }
        return LibvirtDomain(domain, connection: self, name: name)
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

    deinit { virDomainFree(pointer) }

    /// Nimbus's metadata element, nil when the domain has none (it is not Nimbus's).
    var metadata: LibvirtDomainXML.Metadata? {
        guard
            let text = virDomainGetMetadata(
                pointer, Int32(VIR_DOMAIN_METADATA_ELEMENT.rawValue), LibvirtDomainXML.metadataNamespace, 0)
        else {
            virResetLastError()
            return nil
        }
        defer { free(text) }
        return LibvirtDomainXML.Metadata(element: String(cString: text))
    }

    /// libvirt's state and its reason code.
    func state() throws(NimbusError) -> (state: virDomainState, reason: Int32) {
        var state: Int32 = 0
        var reason: Int32 = 0
        guard virDomainGetState(pointer, &state, &reason, 0) == 0 else {
            let error = LibvirtError.last("virDomainGetState")
            throw NimbusError(
                .network, "libvirt could not read the state of domain \(name): \(error.message)", cause: error)
        }
        return (virDomainState(rawValue: UInt32(bitPattern: state)), reason)
    }

    /// Whether the domain still exists and runs (a transient domain vanishes when it stops).
    var isActive: Bool {
        let active = virDomainIsActive(pointer)
        if active < 0 { virResetLastError() }
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
