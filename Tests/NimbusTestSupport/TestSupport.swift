import Foundation
import NimbusCore
import Testing

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

extension TemporaryDirectory {
    /// A NIMBUS_HOME for tests that boot guests: its config.yaml launches instances with one vCPU. Several
    /// guests boot at once (`GuestSlot.count`) on CI's two cores, and under TCG each vCPU is a host thread: two
    /// Debian guests launched at once were ready in 77-88 s with one vCPU each, 85-101 s with two (two runs
    /// each way, on this 2-core host).
    public static func guestHome(_ label: String) throws -> TemporaryDirectory {
        let home = try TemporaryDirectory(label)
        try FileManager.default.createDirectory(at: home.paths.config, withIntermediateDirectories: true)
        try Data(guestConfig.utf8).write(to: home.paths.configFile)
        return home
    }

    /// The config.yaml of `guestHome`.
    public static let guestConfig = "cpus: 1\n"
}

/// Whether skipping is allowed. Locally a missing prerequisite skips the test with the printed reason; in
/// CI (`CI=true` or `NIMBUS_REQUIRE_E2E=1`) nothing is skipped, so a missing prerequisite fails the run
/// instead of hiding it.
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

    /// The guest image folder made by scripts/build-guest-image (holding debian-12-genericcloud-amd64.qcow2, vmlinuz,
    /// initrd.img and SHA256SUMS), from `NIMBUS_TEST_IMAGE_DIR`.
    public static var guestImageDirectory: URL? {
        guard let path = ProcessInfo.processInfo.environment["NIMBUS_TEST_IMAGE_DIR"], !path.isEmpty else {
            return nil
        }
        let url = URL(fileURLWithPath: path, isDirectory: true)
        let image = url.appending(path: "debian-12-genericcloud-amd64.qcow2")
        return FileManager.default.fileExists(atPath: image.path) ? url : nil
    }

    /// The guest image file, for `file://` launches.
    public static var guestImage: URL? {
        guestImageDirectory?.appending(path: "debian-12-genericcloud-amd64.qcow2")
    }

    /// The Debian 13 (trixie) guest image folder made by `scripts/build-guest-image --suite trixie`, from
    /// `NIMBUS_TEST_TRIXIE_DIR`.
    public static var trixieImageDirectory: URL? {
        guard let path = ProcessInfo.processInfo.environment["NIMBUS_TEST_TRIXIE_DIR"], !path.isEmpty else {
            return nil
        }
        let url = URL(fileURLWithPath: path, isDirectory: true)
        return FileManager.default.fileExists(atPath: url.appending(path: "SERIALS").path) ? url : nil
    }

    /// The repository's checkout, for its scripts.
    public static var repository: URL {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent()
    }

    /// Lays the guest images out as a mirror of Debian's cloud tree in `folder` (`scripts/debian-cloud-mirror`):
    /// bookworm's two serials (the older one in `latest/`) and trixie's one.
    public static func makeDebianMirror(_ folder: URL) async throws {
        guard let bookworm = guestImageDirectory, let trixie = trixieImageDirectory else {
            throw NimbusError(.notFound, "the Debian mirror needs NIMBUS_TEST_IMAGE_DIR and NIMBUS_TEST_TRIXIE_DIR")
        }
        let script = repository.appending(path: "scripts/debian-cloud-mirror").path
        try await ProgramRunner.run(script, [folder.path, bookworm.path, trixie.path])
    }

    /// Makes `serial` the build the mirror's `<codename>/latest/` holds, as a new build appears upstream.
    public static func publishDebianBuild(_ folder: URL, codename: String, serial: String) async throws {
        let script = repository.appending(path: "scripts/debian-cloud-mirror").path
        try await ProgramRunner.run(script, ["--publish", folder.path, codename, serial])
    }

    /// The Fedora CoreOS stream mirror of the CoreOS-like guest (scripts/build-coreos-image's `mirror/`), named
    /// by NIMBUS_TEST_COREOS_DIR, for launches of `fedora-coreos:stable`.
    public static var coreOSMirror: URL? {
        guard let path = ProcessInfo.processInfo.environment["NIMBUS_TEST_COREOS_DIR"], !path.isEmpty else {
            return nil
        }
        let mirror = URL(fileURLWithPath: path, isDirectory: true).appending(
            path: "mirror", directoryHint: .isDirectory)
        let stream = mirror.appending(path: "streams/stable.json")
        return FileManager.default.fileExists(atPath: stream.path) ? mirror : nil
    }
}

/// One thing a test needs from the host, and how to get it when it is missing.
public struct Prerequisite: Sendable {
    public let isMet: Bool
    public let need: String

    /// Programs on PATH (or in sbin).
    public static func programs(_ names: String...) -> Prerequisite {
        let missing = names.filter { ProgramRunner.find($0) == nil }
        return Prerequisite(
            isMet: missing.isEmpty, need: "\(missing.joined(separator: ", ")) (bash scripts/install-deps)")
    }

    /// The guest image of scripts/build-guest-image, named by `NIMBUS_TEST_IMAGE_DIR`.
    public static var guestImage: Prerequisite {
        Prerequisite(
            isMet: Prerequisites.guestImageDirectory != nil,
            need: "the guest image in NIMBUS_TEST_IMAGE_DIR (bash scripts/test builds it and sets it)")
    }

    /// The Debian 13 guest in NIMBUS_TEST_TRIXIE_DIR, beside the Debian 12 one: two releases.
    public static var releases: Prerequisite {
        all(
            guest,
            Prerequisite(
                isMet: Prerequisites.trixieImageDirectory != nil,
                need: "the Debian 13 guest in NIMBUS_TEST_TRIXIE_DIR (bash scripts/test builds it and sets it)"))
    }

    /// The CoreOS-like guest's mirror in NIMBUS_TEST_COREOS_DIR.
    public static var coreOS: Prerequisite {
        all(
            programs("qemu-system-x86_64", "qemu-img"),
            Prerequisite(
                isMet: Prerequisites.coreOSMirror != nil,
                need: "the CoreOS-like guest in NIMBUS_TEST_COREOS_DIR (bash scripts/test builds it and sets it)"))
    }

    /// All a guest boot needs: QEMU, qemu-img, OVMF and the guest image.
    public static var guest: Prerequisite {
        all(
            programs("qemu-system-x86_64", "qemu-img"),
            Prerequisite(
                isMet: FileManager.default.fileExists(atPath: "/usr/share/OVMF/OVMF_CODE_4M.fd"),
                need: "OVMF firmware (apt-get install ovmf)"),
            guestImage)
    }

    /// Root, for what only root may do (mounts, starting the system libvirtd).
    public static var root: Prerequisite {
        Prerequisite(isMet: geteuid() == 0, need: "root")
    }

    /// The host's libvirtd, which the tests start themselves (as root) when it is not running.
    public static var libvirt: Prerequisite {
        all(programs("libvirtd", "virtlogd", "virsh", "qemu-system-x86_64"), root)
    }

    /// Met when every one of `prerequisites` is; names only the missing ones.
    public static func all(_ prerequisites: Prerequisite...) -> Prerequisite { all(prerequisites) }

    static func all(_ prerequisites: [Prerequisite]) -> Prerequisite {
        let missing = prerequisites.filter { !$0.isMet }
        return Prerequisite(isMet: missing.isEmpty, need: missing.map(\.need).joined(separator: "; "))
    }
}

extension Trait where Self == ConditionTrait {
    /// Runs the test when every prerequisite is met, or where skipping is not allowed (CI); otherwise skips
    /// it with a reason that names what is missing and how to get it.
    public static func requires(_ prerequisites: Prerequisite...) -> Self {
        let needed = Prerequisite.all(prerequisites)
        return .enabled(if: needed.isMet || Prerequisites.required, Comment(rawValue: "needs \(needed.need)"))
    }
}

/// The `nimbus` executable SwiftPM built beside the test bundle, run as users run it.
public enum NimbusBinary {
    /// `.build/<config>/nimbus`.
    public static var url: URL {
        URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().appending(path: "nimbus")
    }

    /// Runs `nimbus arguments` with `NIMBUS_HOME=home`; returns its status and output.
    public static func run(
        _ arguments: [String], home: URL, input: String? = nil, environment: [String: String] = [:]
    ) async throws -> ProgramOutput {
        try await ProgramRunner.output(
            url.path, arguments, input: input,
            environment: environment.merging(["NIMBUS_HOME": home.path]) { _, home in home })
    }
}
