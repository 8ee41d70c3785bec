import Foundation
import NimbusCore

/// A folder under the system temporary directory that is removed when the test is done.
public struct TemporaryDirectory: Sendable {
    public let url: URL

    public init(_ label: String = "nimbus-test") throws {
        let base = FileManager.default.temporaryDirectory
        url = base.appending(path: "\(label)-\(UUID().uuidString.prefix(8))", directoryHint: .isDirectory)
        try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
    }

    /// The NimbusPaths of a NIMBUS_HOME inside this folder.
    public var paths: NimbusPaths { NimbusPaths.resolve(environment: ["NIMBUS_HOME": url.path]) }

    public func remove() { try? FileManager.default.removeItem(at: url) }

    /// Runs `body` with a fresh folder, then removes it.
    public static func with<T>(_ label: String = "nimbus-test", _ body: (TemporaryDirectory) async throws -> T)
        async throws -> T
    {
        let directory = try TemporaryDirectory(label)
        defer { directory.remove() }
        return try await body(directory)
    }
}

/// Whether the real components a test needs are here. Locally a missing one skips the test with the
/// printed reason; in CI (`CI=true` or `NIMBUS_REQUIRE_E2E=1`) nothing is skipped, so a missing
/// prerequisite fails the run instead of hiding it.
public enum Prerequisites {
    /// True where skipping is not allowed.
    public static var required: Bool {
        let env = ProcessInfo.processInfo.environment
        return env["CI"] == "true" || env["NIMBUS_REQUIRE_E2E"] == "1"
    }

    /// True when every program is on PATH (or in sbin).
    public static func programs(_ names: String...) -> Bool {
        names.allSatisfy { ProgramRunner.find($0) != nil }
    }

    /// The guest image folder made by scripts/build-guest-image (holding debian-12-nocloud.qcow2, vmlinuz,
    /// initrd.img and SHA256SUMS), from `NIMBUS_TEST_IMAGE_DIR`.
    public static var guestImageDirectory: URL? {
        guard let path = ProcessInfo.processInfo.environment["NIMBUS_TEST_IMAGE_DIR"], !path.isEmpty else {
            return nil
        }
        let url = URL(fileURLWithPath: path, isDirectory: true)
        let image = url.appending(path: "debian-12-nocloud.qcow2")
        return FileManager.default.fileExists(atPath: image.path) ? url : nil
    }

    /// True when a guest can be booted: QEMU, OVMF and the guest image are all here.
    public static var canBootGuest: Bool {
        programs("qemu-system-x86_64", "qemu-img")
            && FileManager.default.fileExists(atPath: "/usr/share/OVMF/OVMF_CODE_4M.fd")
            && guestImageDirectory != nil
    }

    /// Condition for `.enabled(if:)`: run when `available`, or when skipping is not allowed.
    public static func run(when available: Bool) -> Bool { available || required }
}

/// The `nimbus` executable SwiftPM built beside the test bundle, run as users run it.
public enum NimbusBinary {
    /// `.build/<config>/nimbus`.
    public static var url: URL {
        URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().appending(path: "nimbus")
    }

    /// Runs `nimbus arguments` with `NIMBUS_HOME=home`; returns its status and output.
    public static func run(_ arguments: [String], home: URL, input: String? = nil) async throws -> ProgramOutput {
        try await ProgramRunner.output(url.path, arguments, input: input, environment: ["NIMBUS_HOME": home.path])
    }
}

extension Prerequisites {
    /// The guest image file, for `file://` launches.
    public static var guestImage: URL? {
        guestImageDirectory?.appending(path: "debian-12-nocloud.qcow2")
    }
}
