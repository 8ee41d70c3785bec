import Foundation
import NimbusCore
import NimbusDrivers
import NimbusMachines
import NimbusQEMU
import NimbusSeed
import NimbusTestSupport
import Testing

@testable import NimbusInstances

/// `seedTransport: http` (`launch --seed-over-http`) without a guest: the spec, the seed folder, the machine,
/// and the errors users meet.
@Suite("Seed over HTTP, without a guest")
struct SeedTransportTests {
    @Test("a spec without seedTransport decodes to iso; http round-trips")
    func specDefault() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let store = InstanceStore(paths: dir.paths)
        let folder = store.directory(try InstanceName("old"))
        try FileManager.default.createDirectory(at: folder.url, withIntermediateDirectories: true)
        try "name: old\nimage: debian:12\n".write(to: folder.spec, atomically: true, encoding: .utf8)
        #expect(try store.loadSpec(InstanceName("old")).seedTransport == .iso)
        try "name: old\nimage: debian:12\nseedTransport: http\n".write(
            to: folder.spec, atomically: true, encoding: .utf8)
        #expect(try store.loadSpec(InstanceName("old")).seedTransport == .http)
    }

    @Test("the seed folder holds the four NoCloud files, owner-only, and is served as written")
    func seedFolder() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let manager = InstanceManager(paths: dir.paths, config: NimbusConfig())
        let name = try InstanceName("web")
        let folder = manager.store.directory(name)
        var config = InstanceConfig()
        config.hostname = "web"
        let seed = try NoCloudSeed(config: config, name: "web", userData: nil)
        try manager.builder.writeSeedFolder(seed, in: folder)
        let seedFolder = InstanceBuilder.seedFolder(folder)
        for file in seed.files {
            let url = seedFolder.appending(path: file.name)
            #expect(FileManager.default.contents(atPath: url.path).map(Array.init) == file.contents, "\(file.name)")
            let mode = try FileManager.default.attributesOfItem(atPath: url.path)[.posixPermissions] as? Int
            #expect(mode == 0o600, "\(file.name)")
        }
        var spec = InstanceSpec(name: name, image: "debian:12")
        spec.seedTransport = .http
        let server = try #require(try await manager.startSeedServer(name, spec: spec))
        defer { Task { await server.shutdown() } }
        #expect(server.guestURL.hasPrefix("http://10.0.2.2:"))
        spec.seedTransport = .iso
        #expect(try await manager.startSeedServer(name, spec: spec) == nil)
    }

    @Test("with a seed URL the machine has no seed disk, only the SMBIOS pointer")
    func machine() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let manager = InstanceManager(paths: dir.paths, config: NimbusConfig())
        var spec = InstanceSpec(name: try InstanceName("web"), image: "debian:12")
        spec.seedTransport = .http
        let folder = manager.store.directory(spec.name)
        let machine = manager.planner.machineConfig(
            spec, state: InstanceState(), in: folder, seedURL: "http://10.0.2.2:4242/")
        #expect(machine.seed == .noCloudNet(url: "http://10.0.2.2:4242/"))
        let arguments = try QEMUCommandLine.machine(machine, in: folder.machine, accelerator: .tcg, sshHostPort: 2200)
            .render()
        #expect(!arguments.contains { $0.contains("seed.iso") || $0.contains("ide-cd") })
        #expect(arguments.contains("type=1,serial=ds=nocloud-net;s=http://10.0.2.2:4242/"))
    }

    @Test("an instance whose seed folder is incomplete is not-found, saying how to recreate it")
    func incompleteFolder() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let manager = InstanceManager(paths: dir.paths, config: NimbusConfig())
        var spec = InstanceSpec(name: try InstanceName("web"), image: "debian:12")
        spec.seedTransport = .http
        let error = await #expect(throws: NimbusError.self) { try await manager.startSeedServer(spec.name, spec: spec) }
        #expect(error?.code == .notFound)
        #expect(error?.message.contains("has no meta-data") == true)
        #expect(error?.message.contains("`nimbus delete --purge web` and launch it again") == true)
    }

    @Test("a machine that stops before fetching its seed ends the wait with an error naming the serial log")
    func machineGone() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let manager = InstanceManager(paths: dir.paths, config: NimbusConfig())
        let name = try InstanceName("web")
        var config = InstanceConfig()
        config.hostname = "web"
        try manager.builder.writeSeedFolder(
            try NoCloudSeed(config: config, name: "web", userData: nil), in: manager.store.directory(name))
        var spec = InstanceSpec(name: name, image: "debian:12")
        spec.seedTransport = .http
        let server = try #require(try await manager.startSeedServer(name, spec: spec))
        // No QEMU runs for this instance: the driver reports it stopped.
        let error = await #expect(throws: NimbusError.self) {
            try await manager.serveSeed(server, to: name, clock: .now, timeout: .seconds(600))
        }
        #expect(error?.code == .processFailed)
        #expect(
            error?.message.contains("web stopped before its guest fetched meta-data, user-data, vendor-data") == true)
        #expect(error?.message.contains("serial.log") == true)
        // The server was shut down.
        let output = try await ProgramRunner.output(
            "curl", ["--silent", "--max-time", "5", server.hostURL + "meta-data"])
        #expect(output.status == 7)
    }

    @Test("a guest that does not fetch in time is a timeout error saying the instance is left running")
    func timeout() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let manager = InstanceManager(paths: dir.paths, config: NimbusConfig())
        let server = try await SeedServer.start(files: [.metaData: [], .userData: []])
        let error = await #expect(throws: NimbusError.self) {
            // A deadline already past: the timer wins before the liveness check runs.
            try await manager.serveSeed(server, to: try InstanceName("web"), clock: .now, timeout: .zero)
        }
        #expect(error?.code == .timeout)
        #expect(
            error?.message.contains("did not fetch meta-data, user-data, vendor-data from http://10.0.2.2:") == true)
        #expect(error?.message.contains("`nimbus stop web`, then `nimbus start web` serves the seed again") == true)
    }
}
