import Foundation
import NimbusCore
import NimbusDrivers
import NimbusInstances
import NimbusTestSupport
import Synchronization
import Testing

/// `launch --seed-over-http` with the real Debian guest (cloud-init 22.4) under QEMU: no seed disk, the
/// guest fetches its NoCloud seed from Nimbus at http://10.0.2.2:PORT/ and applies it.
@Suite("Seed over HTTP", .serialized, .requires(.guest))
struct SeedOverHTTPTests {
    /// Held while this test runs: at most `GuestSlot.count` guest-booting tests at once.
    let guestSlot: GuestSlot
    let home: TemporaryDirectory
    let messages = Messages()
    let manager: InstanceManager
    let image: String

    /// The progress lines the manager reported.
    final class Messages: Sendable {
        let lines = Mutex<[String]>([])
        func append(_ line: String) { lines.withLock { $0.append(line) } }
    }

    init() async throws {
        guestSlot = try await GuestSlot(expectedSeconds: 150)
        home = try TemporaryDirectory.guestHome("nimbus-seedhttp")
        let messages = self.messages
        manager = InstanceManager(paths: home.paths, config: try NimbusConfig.load(paths: home.paths)) { line in
            print("    \(line)")
            messages.append(line)
        }
        image = "file://" + (Prerequisites.guestImage?.path ?? "/missing-guest-image")
    }

    /// QEMU's argument vector, read from /proc through the machine's pidfile.
    func qemuArguments(_ name: InstanceName) throws -> [String] {
        let pidFile = manager.store.directory(name).machine.pidFile
        let pid = try #require(
            Int32(try String(contentsOf: pidFile, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)))
        let data = try #require(FileManager.default.contents(atPath: "/proc/\(pid)/cmdline"))
        return data.split(separator: 0).map { String(decoding: $0, as: UTF8.self) }
    }

    @Test("the guest fetches its seed over HTTP, with no seed disk, and takes the hostname it sets")
    func launchOverHTTP() async throws {
        let name = try InstanceName("seedhttp")
        defer {
            let (manager, home) = (manager, home)
            Task {
                try? await manager.delete(name, purge: true)
                home.remove()
            }
        }
        var spec = InstanceSpec(name: name, image: image)
        spec.memory = .mebibytes(1024)
        spec.hostname = "fetched-over-http"
        spec.seedTransport = .http
        let info = try await manager.launch(spec, wait: true, timeout: .seconds(900))
        #expect(info.cloudInit == "done")

        // No seed disk: no seed.iso written, none on QEMU's command line; the seed is in the SMBIOS serial.
        let dir = manager.store.directory(name)
        #expect(!FileManager.default.fileExists(atPath: dir.seed.path))
        #expect(FileManager.default.fileExists(atPath: dir.url.appending(path: "seed/user-data").path))
        let arguments = try qemuArguments(name)
        let seedDisk = ["seed.iso", "id=seed", "media=cdrom", "ide-cd"]
        #expect(!arguments.contains { argument in seedDisk.contains { argument.contains($0) } }, "\(arguments)")
        let smbios = try #require(arguments.firstIndex(of: "-smbios").map { arguments[$0 + 1] })
        #expect(smbios.hasPrefix("type=1,serial=ds=nocloud-net;s=http://10.0.2.2:"), "\(smbios)")
        #expect(smbios.hasSuffix("/"))
        let lines = messages.lines.withLock { $0 }
        #expect(lines.contains { $0.contains("seed fetched over HTTP") }, "\(lines)")

        // Inside the guest: the datasource is NoCloud over the network, from that URL, and it applied the seed.
        let ssh = try await manager.sshAccess(name)
        let hostname = try await ssh.run(["hostname"])
        #expect(hostname.standardOutput.trimmingCharacters(in: .whitespacesAndNewlines) == "fetched-over-http")
        let status = try await ssh.run(["cloud-init", "status", "--long"])
        #expect(status.standardOutput.contains("status: done"), "\(status.standardOutput)")
        #expect(status.standardOutput.contains("DataSourceNoCloudNet"), "\(status.standardOutput)")
        #expect(status.standardOutput.contains("http://10.0.2.2:"), "\(status.standardOutput)")

        try await manager.delete(name, purge: true)
        #expect(!manager.store.exists(name))
    }
}
