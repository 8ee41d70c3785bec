#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// TCP ports on 127.0.0.1, the only address Nimbus forwards guest ports on (never 0.0.0.0).
public enum Loopback {
    /// The socket address of 127.0.0.1:`port`.
    public static func address(port: UInt16) -> sockaddr_in {
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = port.bigEndian
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        return address
    }

    /// A new TCP socket bound to 127.0.0.1:`port` (0: a port the kernel picks), with the port it got; nil
    /// when the port is taken. The caller closes the descriptor.
    public static func bindSocket(port: UInt16) -> (descriptor: Int32, port: UInt16)? {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { return nil }
        var address = address(port: port)
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(fd, $0, length) == 0 && getsockname(fd, $0, &length) == 0
            }
        }
        guard bound else {
            close(fd)
            return nil
        }
        return (fd, UInt16(bigEndian: address.sin_port))
    }

    /// True when nothing holds `port` now.
    public static func isFree(_ port: UInt16) -> Bool {
        guard let socket = bindSocket(port: port) else { return false }
        close(socket.descriptor)
        return true
    }

    /// A port on 127.0.0.1 that nothing listens on now, or an error saying there is none.
    public static func requireFreePort() throws(NimbusError) -> UInt16 {
        guard let port = freePort() else { throw NimbusError(.network, "could not find a free port on 127.0.0.1") }
        return port
    }

    /// A port nothing holds now, picked by the kernel.
    public static func freePort() -> UInt16? {
        guard let socket = bindSocket(port: 0) else { return nil }
        close(socket.descriptor)
        return socket.port
    }

    /// A new TCP socket connected to 127.0.0.1:`port`, or nil. The caller closes it.
    public static func connectSocket(port: UInt16) -> Int32? {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { return nil }
        var address = address(port: port)
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
        guard connected == 0 else {
            close(fd)
            return nil
        }
        return fd
    }
}
