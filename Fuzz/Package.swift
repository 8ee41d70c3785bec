// swift-tools-version: 6.1
import PackageDescription

/// libFuzzer targets for Nimbus's hand-written parsers and writers (issue 19); see README.md.
///
/// Build (debug only: `@testable import` of the root package's modules needs its debug build's -enable-testing):
///
///     swift build --package-path Fuzz --scratch-path .build/fuzz -Xswiftc -sanitize=fuzzer -Xswiftc -parse-as-library
///
/// or run `bench/fuzz`, which builds and runs them. libFuzzer supplies `main`; each target's one file defines
/// `LLVMFuzzerTestOneInput`.
///
/// NimbusDisks, NimbusImages and NimbusSeed are not products of the root package: they are built as dependencies
/// of the NimbusInstances product, and imported here with `@testable import` (SwiftPM's module search path holds
/// every module of the build).
/// `@_extern(c)` declares libFuzzer's `LLVMFuzzerRunDriver` (FuzzDriver) for each target's entry point: SwiftPM's debug build
/// links an executable with `main` renamed to `<module>_main` (`--defsym`, so that tests can import executables),
/// which takes the place of libFuzzer's own `main`; each target defines that function and hands over to the driver.
let fuzzSettings: [SwiftSetting] = [.enableExperimentalFeature("Extern")]

let package = Package(
    name: "NimbusFuzz",
    platforms: [.macOS(.v15)],
    dependencies: [
        .package(name: "nimbus", path: ".."),
        // Versions come from the root package's resolution (Package.resolved here is a copy of it).
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.2"),
        .package(url: "https://github.com/jpsim/Yams", from: "6.2.2"),
    ],
    targets: [
        .target(name: "FuzzDriver", swiftSettings: fuzzSettings),
        .executableTarget(
            name: "fuzz-qcow2", dependencies: ["FuzzDriver", .product(name: "NimbusInstances", package: "nimbus")],
            swiftSettings: fuzzSettings),
        .executableTarget(
            name: "fuzz-qmp",
            dependencies: [
                "FuzzDriver", .product(name: "NimbusQMP", package: "nimbus"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
            ],
            swiftSettings: fuzzSettings),
        .executableTarget(
            name: "fuzz-catalogs", dependencies: ["FuzzDriver", .product(name: "NimbusInstances", package: "nimbus")],
            swiftSettings: fuzzSettings),
        .executableTarget(
            name: "fuzz-yaml11",
            dependencies: [
                "FuzzDriver", .product(name: "NimbusInstances", package: "nimbus"),
                .product(name: "Yams", package: "Yams"),
            ],
            swiftSettings: fuzzSettings),
        .executableTarget(
            name: "fuzz-iso9660", dependencies: ["FuzzDriver", .product(name: "NimbusISO9660", package: "nimbus")],
            swiftSettings: fuzzSettings),
    ],
    swiftLanguageModes: [.v6]
)
