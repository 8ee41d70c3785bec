import CLibvirt
import Foundation
import NimbusCore
import NimbusMachines

/// A failed libvirt call, with libvirt's own error number and domain (virterror.h), so failures are told
/// apart by number rather than by English text.
public struct LibvirtError: Error, Sendable, Hashable, CustomStringConvertible {
    /// `virErrorNumber`: VIR_ERR_NO_DOMAIN, VIR_ERR_SYSTEM_ERROR, ...
    public let code: Int32
    /// `virErrorDomain`: VIR_FROM_RPC, VIR_FROM_QEMU, ...
    public let domain: Int32
    /// For VIR_ERR_SYSTEM_ERROR, the errno libvirt saw (its `int1`); 0 otherwise.
    public let systemErrno: Int32
    /// libvirt's message.
    public let message: String
    /// The call that failed.
    public let call: String

    public var description: String { message }

    /// The last error of this thread, cleared after reading.
    static func last(_ call: String) -> LibvirtError {
        guard let error = libvirt.virGetLastError() else {
            return LibvirtError(
                code: -1, domain: 0, systemErrno: 0, message: "\(call) failed with no error from libvirt", call: call)
        }
        let code = error.pointee.code
        let message = error.pointee.message.map { String(cString: $0) } ?? "\(call) failed"
        let result = LibvirtError(
            code: code, domain: error.pointee.domain,
            systemErrno: code == Int32(VIR_ERR_SYSTEM_ERROR.rawValue) ? error.pointee.int1 : 0,
            message: message, call: call)
        libvirt.virResetLastError()
        return result
    }

    func matches(_ number: virErrorNumber) -> Bool { code == Int32(number.rawValue) }
}
