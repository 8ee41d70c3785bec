import Foundation
import NimbusCore
import NimbusDrivers
import NimbusTestSupport
import Testing

@testable import NimbusInstances
@testable import NimbusMachines
@testable import NimbusQEMU

/// The virtiofsd an instance owns, against Debian's real virtiofsd (root: it sandboxes itself in
/// namespaces), with no guest: it listens on its socket and waits for a QEMU that these tests never start.
@Suite(
    "virtiofsd belongs to its instance",
    .requires(.root, .programs("/usr/lib/qemu/virtiofsd")))
struct VirtiofsdTests {
    static func machine(sharing folder: URL, as name: String) -> MachineConfig {
        var config = MachineConfig(name: name)
        config.shares = [.init(hostPath: folder.path, tag: "nimbus0")]
        return config
    }

    @Test("started with a pidfile, socket and log in the folder, found by its owner variable, ended with nothing left")
    func lifecycle() async throws {
        try await TemporaryDirectory.with { dir in
            let share = dir.url.appending(path: "share")
            try FileManager.default.createDirectory(at: share, withIntermediateDirectories: true)
            let folder = MachineDirectory(dir.url.appending(path: "machine"))
            try FileManager.default.createDirectory(at: folder.url, withIntermediateDirectories: true)
            try await Virtiofsd.startAll(Self.machine(sharing: share, as: "web"), in: folder)
            let pids = Virtiofsd.livePIDs(in: folder)
            #expect(pids.count == 1)
            var info = stat()
            #expect(stat(folder.virtiofsSocket(0).path, &info) == 0 && info.st_mode & 0o777 == 0o600)
            #expect(FileManager.default.fileExists(atPath: folder.virtiofsPIDFile(0).path))
            // Another folder's virtiofsd is not this one's, even with the same socket name.
            let other = MachineDirectory(dir.url.appending(path: "other"))
            try FileManager.default.createDirectory(at: other.url, withIntermediateDirectories: true)
            try FileManager.default.copyItem(at: folder.virtiofsPIDFile(0), to: other.virtiofsPIDFile(0))
            #expect(Virtiofsd.livePIDs(in: other).isEmpty)
            // A second start ends the first: one virtiofsd per share, never two.
            try await Virtiofsd.startAll(Self.machine(sharing: share, as: "web"), in: folder)
            let again = Virtiofsd.livePIDs(in: folder)
            #expect(again.count == 1 && again != pids)
            #expect(pids.allSatisfy { !PIDFile.isAlive($0) })
            #expect(Virtiofsd.stopAll(in: folder) == again)
            #expect(Virtiofsd.livePIDs(in: folder).isEmpty)
            #expect(!FileManager.default.fileExists(atPath: folder.virtiofsSocket(0).path))
            #expect(!FileManager.default.fileExists(atPath: folder.virtiofsPIDFile(0).path))
        }
    }

    @Test("a shared folder that does not exist is refused, naming it, and nothing is left running")
    func missingFolder() async throws {
        try await TemporaryDirectory.with { dir in
            let folder = MachineDirectory(dir.url.appending(path: "machine"))
            try FileManager.default.createDirectory(at: folder.url, withIntermediateDirectories: true)
            let missing = dir.url.appending(path: "nope")
            await #expect {
                try await Virtiofsd.startAll(Self.machine(sharing: missing, as: "web"), in: folder)
            } throws: { error in
                (error as? NimbusError)?.message.contains("the shared folder \(missing.path) does not exist") == true
            }
            #expect(Virtiofsd.livePIDs(in: folder).isEmpty)
        }
    }

    @Test("doctor names a virtiofsd whose instance is gone, and one without its QEMU, and --fix ends both")
    func doctor() async throws {
        try await TemporaryDirectory.with { dir in
            let manager = InstanceManager(paths: dir.paths, config: NimbusConfig())
            let share = dir.url.appending(path: "share")
            try FileManager.default.createDirectory(at: share, withIntermediateDirectories: true)
            // A folder of the store that is no instance (its launch was killed before instance.yaml).
            let orphan = MachineDirectory(dir.paths.instances.appending(path: "gone"))
            try FileManager.default.createDirectory(at: orphan.url, withIntermediateDirectories: true)
            try await Virtiofsd.startAll(Self.machine(sharing: share, as: "gone"), in: orphan)
            let orphanPID = try #require(Virtiofsd.livePIDs(in: orphan).first)
            // An instance whose start was killed between its virtiofsd and its QEMU.
            let name = try InstanceName("web")
            _ = try await manager.store.create(InstanceSpec(name: name, image: "file:///nowhere.qcow2")) { _ in
                InstanceState()
            }
            let web = manager.store.directory(name).machine
            try await Virtiofsd.startAll(Self.machine(sharing: share, as: "web"), in: web)
            let strayPID = try #require(Virtiofsd.livePIDs(in: web).first)

            let findings = await manager.checkStore(fix: false)
            let orphanFinding = findings.first { $0.subject == "virtiofsd pid \(orphanPID)" }
            #expect(orphanFinding?.ok == false)
            #expect(orphanFinding?.detail.contains("which is not an instance") == true)
            let stray = findings.first { $0.subject == "instance web" && $0.detail.contains("virtiofsd") }
            #expect(stray?.detail.contains("pid \(strayPID)") == true, "\(findings)")
            #expect(stray?.detail.contains("runs with no QEMU") == true)

            let fixed = await manager.checkStore(fix: true)
            let ended = fixed.filter { $0.detail.contains("virtiofsd") || $0.subject.hasPrefix("virtiofsd") }
            #expect(ended.count == 2 && ended.allSatisfy { $0.fixed }, "\(fixed)")
            let deadline = ContinuousClock.now + .seconds(5)
            while PIDFile.isAlive(orphanPID) || PIDFile.isAlive(strayPID), ContinuousClock.now < deadline {
                try await Task.sleep(for: .milliseconds(20))
            }
            #expect(!PIDFile.isAlive(orphanPID) && !PIDFile.isAlive(strayPID))
        }
    }
}
