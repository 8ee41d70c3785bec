// fuzz-yaml11: YAML11Resolution.tag(of:), Nimbus's regex-free YAML 1.1 scalar typing, against its oracle, Yams's
// Resolver.default (NSRegularExpression), as YAML11ResolutionTests compares them: for any string, both must give
// the same tag. The input is the string, as UTF-8 (invalid sequences become U+FFFD, as String(decoding:) makes
// them). A difference is a crash that names the string.

import FuzzDriver
import Yams

@testable import NimbusSeed

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let string = String(decoding: UnsafeBufferPointer(start: data, count: size), as: UTF8.self)
    let mine = YAML11Resolution.tag(of: string)
    let oracle = Resolver.default.resolveTag(of: Node(string))
    if mine != oracle {
        fatalError("YAML11Resolution.tag(of: \(string.debugDescription)) is \(mine), Resolver.default says \(oracle)")
    }
    return 0
}

// MARK: - Entry point

/// What SwiftPM's debug link calls for `main`: libFuzzer's driver, with this target.
@_cdecl("fuzz_yaml11_main")
public func fuzzerMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    runLibFuzzer(argc, argv, fuzz)
}
