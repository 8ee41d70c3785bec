// swift-tools-version: 6.1
import PackageDescription

#if canImport(Glibc)
    import Glibc
#endif

/// Strict concurrency is the language mode; warnings are errors in CI through `-warnings-as-errors` on the
/// command line (scripts/test), not here, so a newer compiler's new warning never breaks a user's build.
let swiftSettings: [SwiftSetting] = [
    .enableUpcomingFeature("ExistentialAny"),
]

/// How the `nimbus` executable is linked on Linux; each flag is there for start-up time, which is most of a
/// short command's run (bench/RESULTS.md, "Seed").
/// - It exports no symbols: with the Swift runtime linked in (staticSwiftRuntime, below), Swift's link arguments
///   add --export-dynamic, which puts every symbol of every package module (~34,000) in .dynsym, where the
///   runtime's start-up dladdr scans them linearly and ld.so hashes them: ~0.3 ms of every command (session 3).
///   Nothing looks symbols up in the executable (libvirt is dlopen'ed and calls nothing back by name).
/// - It is linked by lld (the toolchain's own) so its ~123,000 relative relocations can be packed as DT_RELR:
///   24 KB instead of a 2.9 MB .rela.dyn that ld.so reads at every start (~40 fewer page faults, ~0.25 ms;
///   session 5). The executable stays position independent. Only a glibc of 2.36 or later loads DT_RELR,
///   and lld marks the binary as needing it, so packing is left out when the building host's glibc is
///   older: the binary is built where it runs.
let executableLinkerFlags: [String] = {
    var flags = ["-use-ld=lld", "-Xlinker", "--no-export-dynamic"]
    if let glibc = buildingHostGlibc(), glibc >= (2, 36) {
        flags += ["-Xlinker", "-z", "-Xlinker", "pack-relative-relocs"]
    }
    return flags
}()

/// The release executable carries the Swift runtime, Foundation and Dispatch inside it, as `swift build
/// --static-swift-stdlib` would make it, but here, so that the plain `swift build -c release` a user runs makes the
/// binary that is installed and measured: dynamically linked, `nimbus --version` took 18 ms instead of ~4.5
/// (the loader binding libswiftCore's and Foundation's symbols at every start), and the binary needs a Swift
/// toolchain wherever it runs. `-static-stdlib` goes to the executable's compile as well as to its link: compiled
/// against the toolchain's static modules, its object names every library static Foundation needs (ICU,
/// CoreFoundation, its shims) for the link to take, which the other modules' objects do not. Those are compiled
/// as usual, so debug and test builds are unchanged, and only this small module differs from a dynamic build.
let staticSwiftRuntime: (compile: SwiftSetting, link: LinkerSetting) = (
    .unsafeFlags(["-static-stdlib"], .when(platforms: [.linux], configuration: .release)),
    .unsafeFlags(["-static-stdlib"], .when(platforms: [.linux], configuration: .release))
)

/// The (major, minor) version of this host's glibc, which confstr reports as "glibc 2.36"; nil elsewhere.
func buildingHostGlibc() -> (Int, Int)? {
    #if canImport(Glibc)
        var buffer = [UInt8](repeating: 0, count: 64)
        let length = buffer.withUnsafeMutableBytes { bytes in
            confstr(Int32(_CS_GNU_LIBC_VERSION), bytes.baseAddress?.assumingMemoryBound(to: CChar.self), bytes.count)
        }
        guard length > 0 else { return nil }
        let text = String(decoding: buffer.prefix(length - 1), as: UTF8.self)
        let numbers = text.split(separator: " ").last?.split(separator: ".").compactMap { Int($0) } ?? []
        return numbers.count >= 2 ? (numbers[0], numbers[1]) : nil
    #else
        return nil
    #endif
}

let package = Package(
    name: "nimbus",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "nimbus", targets: ["nimbus"]),
        .library(name: "NimbusInstances", targets: ["NimbusInstances", "NimbusDrivers"]),
        .library(name: "NimbusISO9660", targets: ["NimbusISO9660"]),
        .library(name: "NimbusQMP", targets: ["NimbusQMP"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/jpsim/Yams", from: "6.2.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-crypto", from: "4.5.2"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.2"),
        .package(url: "https://github.com/swift-server/async-http-client", from: "1.37.0"),
        .package(url: "https://github.com/swiftlang/swift-subprocess", from: "1.0.2"),
        // `swift package generate-documentation --target NimbusInstances` (the DocC catalog; scripts/test builds it).
        .package(url: "https://github.com/swiftlang/swift-docc-plugin", from: "1.5.0"),
    ],
    targets: [
        // Stand-alone formats and protocols: they import nothing else of the package.
        .target(name: "NimbusISO9660", exclude: ["README.md"], swiftSettings: swiftSettings),
        .target(
            name: "NimbusQMP",
            dependencies: [.product(name: "NIOCore", package: "swift-nio"), .product(name: "NIOPosix", package: "swift-nio")],
            exclude: ["README.md"],
            swiftSettings: swiftSettings
        ),

        // libvirt's C API (headers from Debian's libvirt-dev), loaded with dlopen on first use rather than
        // linked: see Sources/CLibvirt/include/CLibvirt.h. Used only by NimbusLibvirt.
        .target(name: "CLibvirt", linkerSettings: [.linkedLibrary("dl")]),

        // The shared floor: errors, paths, sizes, running programs, atomic files.
        .target(
            name: "NimbusCore",
            dependencies: [
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Subprocess", package: "swift-subprocess"),
            ],
            swiftSettings: swiftSettings
        ),

        // spec ──► image ──► disk ──► seed ──► machine ──► instance
        .target(
            name: "NimbusImages",
            dependencies: [
                "NimbusCore", "NimbusDisks",
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "Yams", package: "Yams"),
            ],
            exclude: ["README.md"],
            swiftSettings: swiftSettings
        ),
        .target(name: "NimbusDisks", dependencies: ["NimbusCore"], exclude: ["README.md"], swiftSettings: swiftSettings),
        .target(
            name: "NimbusSeed",
            dependencies: [
                "NimbusCore", "NimbusISO9660",
                .product(name: "Yams", package: "Yams"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
            ],
            swiftSettings: swiftSettings
        ),

        // Machines: what a machine is and the protocol drivers implement (small, driver-free); each driver
        // in a target of its own. NimbusInstances depends on NimbusMachines only: the compiler keeps driver
        // types out of it. NimbusDrivers (after NimbusInstances) is the one place that knows every driver.
        .target(name: "NimbusMachines", dependencies: ["NimbusCore"], swiftSettings: swiftSettings),
        .target(
            name: "NimbusQEMU",
            dependencies: ["NimbusCore", "NimbusMachines", "NimbusQMP"],
            swiftSettings: swiftSettings
        ),
        .target(
            name: "NimbusLibvirt",
            dependencies: [
                "NimbusCore", "NimbusDisks", "NimbusMachines", "CLibvirt",
                .product(name: "Crypto", package: "swift-crypto"),
            ],
            exclude: ["README.md"],
            swiftSettings: swiftSettings
        ),
        .target(
            name: "NimbusDrivers",
            dependencies: ["NimbusCore", "NimbusMachines", "NimbusQEMU", "NimbusLibvirt", "NimbusInstances"],
            swiftSettings: swiftSettings
        ),
        .target(
            name: "NimbusInstances",
            dependencies: [
                "NimbusCore", "NimbusImages", "NimbusDisks", "NimbusSeed", "NimbusMachines",
                .product(name: "Yams", package: "Yams"),
                .product(name: "Crypto", package: "swift-crypto"),
            ],
            swiftSettings: swiftSettings
        ),
        .target(
            name: "NimbusCommands",
            dependencies: [
                "NimbusInstances", "NimbusImages", "NimbusDisks", "NimbusDrivers", "NimbusSeed",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Yams", package: "Yams"),
            ],
            swiftSettings: swiftSettings
        ),
        // The library's face: a client of the public API alone, built (and run against the test guest) in CI.
        .executableTarget(
            name: "LaunchAndRun", dependencies: ["NimbusInstances", "NimbusDrivers", "NimbusCore"],
            path: "Examples/LaunchAndRun", swiftSettings: swiftSettings
        ),
        .executableTarget(
            name: "nimbus", dependencies: ["NimbusCommands"],
            swiftSettings: swiftSettings + [staticSwiftRuntime.compile],
            linkerSettings: [.unsafeFlags(executableLinkerFlags, .when(platforms: [.linux])), staticSwiftRuntime.link]
        ),

        // Tests. Each module has its own; NimbusIntegrationTests boots real guests and runs serialized.
        .target(name: "NimbusTestSupport", dependencies: ["NimbusCore"], path: "Tests/NimbusTestSupport"),
        .testTarget(name: "NimbusCoreTests", dependencies: ["NimbusCore", "NimbusTestSupport"], swiftSettings: swiftSettings),
        .testTarget(name: "NimbusISO9660Tests", dependencies: ["NimbusISO9660", "NimbusTestSupport"], resources: [.copy("Resources")], swiftSettings: swiftSettings),
        .testTarget(name: "NimbusQMPTests", dependencies: ["NimbusQMP", "NimbusTestSupport"], swiftSettings: swiftSettings),
        .testTarget(
            name: "NimbusImagesTests",
            dependencies: [
                "NimbusImages", "NimbusDisks", "NimbusTestSupport",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
            ],
            swiftSettings: swiftSettings
        ),
        .testTarget(name: "NimbusDisksTests", dependencies: ["NimbusDisks", "NimbusTestSupport"], swiftSettings: swiftSettings),
        .testTarget(name: "NimbusSeedTests", dependencies: ["NimbusSeed", "NimbusTestSupport"], resources: [.copy("Resources")], swiftSettings: swiftSettings),
        .testTarget(
            name: "NimbusMachinesTests",
            dependencies: ["NimbusMachines", "NimbusQEMU", "NimbusLibvirt", "NimbusSeed", "NimbusQMP", "NimbusTestSupport"],
            swiftSettings: swiftSettings
        ),
        .testTarget(name: "NimbusInstancesTests",
            dependencies: [
                "NimbusInstances", "NimbusDrivers", "NimbusQEMU", "NimbusLibvirt", "NimbusTestSupport",
                .product(name: "Yams", package: "Yams"),
            ],
            swiftSettings: swiftSettings),
        .testTarget(name: "NimbusCommandsTests", dependencies: ["NimbusCommands", "NimbusTestSupport"], swiftSettings: swiftSettings),
        .testTarget(
            name: "NimbusIntegrationTests",
            dependencies: [
                "NimbusCommands", "NimbusInstances", "NimbusDrivers", "NimbusMachines", "NimbusQEMU", "NimbusLibvirt",
                "NimbusSeed", "NimbusQMP", "NimbusTestSupport",
            ],
            swiftSettings: swiftSettings
        ),
    ],
    swiftLanguageModes: [.v6]
)
