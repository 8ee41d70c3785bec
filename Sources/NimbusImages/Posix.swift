import Foundation
import NimbusCore

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// A failed system call on `url` as a NimbusError naming the action, the path and errno's text.
func posixFailure(_ action: String, _ url: URL) -> NimbusError {
    NimbusError(.io, "could not \(action) \(url.path): \(String(cString: strerror(errno)))")
}
