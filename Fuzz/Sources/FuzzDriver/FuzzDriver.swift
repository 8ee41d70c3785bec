// FuzzDriver: what every target's entry point shares, handing the process to libFuzzer's driver.

/// libFuzzer's driver (libclang_rt.fuzzer, linked by -sanitize=fuzzer).
@_extern(c, "LLVMFuzzerRunDriver")
func runFuzzerDriver(
    _ argc: UnsafeMutablePointer<CInt>,
    _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>,
    _ callback: @convention(c) (UnsafePointer<UInt8>, Int) -> CInt
) -> CInt

/// Runs libFuzzer with the process's arguments and `target` as LLVMFuzzerTestOneInput. A target's
/// `<module>_main` calls it: SwiftPM's debug link makes `main` an alias of that function (Package.swift says
/// why), so libFuzzer's own `main` never runs.
public func runLibFuzzer(
    _ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?,
    _ target: @convention(c) (UnsafePointer<UInt8>, Int) -> CInt
) -> CInt {
    var argc = argc
    var argv = argv
    return runFuzzerDriver(&argc, &argv, target)
}
