import Foundation
import NimbusCore
import NimbusMachines
import NimbusTestSupport
import Testing
import Yams

@testable import NimbusInstances

@Suite("Instance names")
struct InstanceNameTests {
    @Test("RFC 1123 labels are accepted", arguments: ["web", "web-1", "a", "0day", String(repeating: "a", count: 63)])
    func accepts(name: String) throws {
        #expect(try InstanceName(name).rawValue == name)
    }

    @Test(
        "anything else is rejected before anything is written, naming the fix",
        arguments: [
            "Web_1", "../x", "a/b", ".", "", "-web", "web-", "UPPER", "has space", String(repeating: "a", count: 64),
        ])
    func rejects(name: String) {
        let error = #expect(throws: NimbusError.self) { try InstanceName(name) }
        #expect(error?.code == .invalidArgument)
    }

    @Test("the message for a bad character says what is allowed")
    func message() {
        let error = #expect(throws: NimbusError.self) { try InstanceName("Web_1") }
        #expect(
            error?.message
                == "instance name \"Web_1\" is not a valid hostname: use a-z, 0-9 and '-', neither first nor last")
    }

    @Test("generated names are two words and avoid taken ones")
    func generated() {
        let name = InstanceName.generate(avoiding: ["brisk-heron"])
        #expect(name.rawValue.split(separator: "-").count == 2)
        #expect(name.rawValue != "brisk-heron")
    }
}

@Suite("Mounts and ephemeral disks on the command line")
struct SpecParsingTests {
    @Test("mounts need an existing host folder and an absolute guest path")
    func mounts() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let mount = try Mount(parsing: "\(dir.url.path):/src")
        #expect(mount.guestPath == "/src")
        #expect(throws: NimbusError.self) { try Mount(parsing: "\(dir.url.path):relative") }
        #expect(throws: NimbusError.self) { try Mount(parsing: "/nonexistent-nimbus:/src") }
    }

    @Test("ephemeral disks default to /mnt")
    func ephemeral() throws {
        #expect(try EphemeralDisk(parsing: "4G").mountPoint == "/mnt")
        #expect(try EphemeralDisk(parsing: "4G:/scratch").mountPoint == "/scratch")
        #expect(throws: NimbusError.self) { try EphemeralDisk(parsing: "4G:scratch") }
        #expect(throws: NimbusError.self) { try EphemeralDisk(parsing: "0:/x") }
    }
}

@Suite("The instance store")
struct InstanceStoreTests {
    @Test("create builds in a hidden folder and renames it into place; list sees only whole instances")
    func create() async throws {
        try await TemporaryDirectory.with { dir in
            let store = InstanceStore(paths: dir.paths)
            let name = try InstanceName("web")
            let spec = InstanceSpec(name: name, image: "debian:12")
            _ = try await store.withLock(name) { _ in
                try await store.create(spec) { staging in
                    #expect(staging.url.lastPathComponent.hasPrefix(".creating-web-"))
                    #expect(store.names().isEmpty)
                    var state = InstanceState()
                    state.sshPort = 2222
                    return state
                }
            }
            #expect(store.names() == [name])
            #expect(try store.loadSpec(name) == spec)
            #expect(try store.loadState(name).sshPort == 2222)
            #expect(try store.loadState(name).complete)
        }
    }

    @Test("a failed build leaves nothing behind")
    func failedBuild() async throws {
        try await TemporaryDirectory.with { dir in
            let store = InstanceStore(paths: dir.paths)
            let name = try InstanceName("web")
            await #expect(throws: NimbusError.self) {
                try await store.create(InstanceSpec(name: name, image: "x")) { _ in
                    throw NimbusError(.io, "disk full")
                }
            }
            #expect(try FileManager.default.contentsOfDirectory(atPath: dir.paths.instances.path).isEmpty)
        }
    }

    @Test("creating an existing name fails cleanly, naming it")
    func duplicate() async throws {
        try await TemporaryDirectory.with { dir in
            let store = InstanceStore(paths: dir.paths)
            let spec = InstanceSpec(name: try InstanceName("web"), image: "x")
            _ = try await store.create(spec) { _ in InstanceState() }
            let error = await #expect(throws: NimbusError.self) {
                try await store.create(spec) { _ in InstanceState() }
            }
            #expect(error?.code == .alreadyExists)
            #expect(error?.message.contains("\"web\" exists already") == true)
        }
    }

    @Test("an unknown instance is not-found with a hint")
    func unknown() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let error = #expect(throws: NimbusError.self) {
            try InstanceStore(paths: dir.paths).loadSpec(InstanceName("nope"))
        }
        #expect(error?.code == .notFound)
        #expect(error?.message == "instance \"nope\" does not exist: `nimbus list` shows the instances")
    }

    @Test("remove deletes the folder and the lock file")
    func remove() async throws {
        try await TemporaryDirectory.with { dir in
            let store = InstanceStore(paths: dir.paths)
            let name = try InstanceName("web")
            _ = try await store.create(InstanceSpec(name: name, image: "x")) { _ in InstanceState() }
            try await store.withLock(name) { lock in try store.remove(name, lock: lock) }
            #expect(store.names().isEmpty)
            #expect(
                try FileManager.default.contentsOfDirectory(atPath: dir.paths.data.appending(path: "locks").path)
                    .isEmpty)
        }
    }

    @Test("a spec missing optional keys decodes to the defaults")
    func specDefaults() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let store = InstanceStore(paths: dir.paths)
        let folder = store.directory(try InstanceName("old"))
        try FileManager.default.createDirectory(at: folder.url, withIntermediateDirectories: true)
        try "name: old\nimage: debian:12\n".write(to: folder.spec, atomically: true, encoding: .utf8)
        let spec = try store.loadSpec(InstanceName("old"))
        #expect(spec.cpus == 2 && spec.memory == .gibibytes(2) && spec.driver == .qemu)
        // Before `auto` firmware, every instance was UEFI; before networks, it had none.
        #expect(spec.firmware == .uefi && spec.accelerator == .auto && spec.networks.isEmpty)
    }

    @Test("an instance.yaml as session 7's Nimbus wrote it (accelerator and firmware as text) still loads")
    func specFromBeforeTypedFields() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let store = InstanceStore(paths: dir.paths)
        let folder = store.directory(try InstanceName("web"))
        try FileManager.default.createDirectory(at: folder.url, withIntermediateDirectories: true)
        try """
        accelerator: tcg
        cpuModel: max
        cpus: 2
        disk: 10G
        driver: qemu
        firmware: bios
        forwards: []
        image: file:///tmp/debian-12-genericcloud-amd64.qcow2
        memory: 1G
        mountType: virtiofs
        mounts: []
        name: web
        seedTransport: iso
        sshAuthorizedKeys: []
        userDataEncoding: text
        version: 1
        """.write(to: folder.spec, atomically: true, encoding: .utf8)
        let spec = try store.loadSpec(InstanceName("web"))
        #expect(spec.accelerator == .tcg && spec.firmware == .bios && spec.cpuModel == "max")
    }

    @Test(
        "an instance.yaml and a network.yaml as session 9's Nimbus wrote them (driver, connect, pool as text) load into the typed driver and are written back with the same keys"
    )
    func driverFromBeforeTypedDriver() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let store = InstanceStore(paths: dir.paths)
        let folder = store.directory(try InstanceName("db"))
        try FileManager.default.createDirectory(at: folder.url, withIntermediateDirectories: true)
        try """
        version: 1
        name: db
        image: debian:12
        cpus: 2
        memory: 1G
        disk: 10G
        sshAuthorizedKeys: []
        userDataEncoding: text
        mounts: []
        mountType: virtiofs
        forwards: []
        accelerator: auto
        firmware: bios
        driver: libvirt
        connect: qemu+ssh://root@rack1/system
        pool: fast
        seedTransport: iso
        networks: []
        """.write(to: folder.spec, atomically: true, encoding: .utf8)
        let spec = try store.loadSpec(InstanceName("db"))
        #expect(spec.driver == .libvirt(connect: "qemu+ssh://root@rack1/system", pool: "fast"))
        let written = try YAMLEncoder().encode(spec)
        for line in ["driver: libvirt", "connect: qemu+ssh://root@rack1/system", "pool: fast"] {
            #expect(written.contains("\n\(line)\n"), "\(written)")
        }
        #expect(try YAMLDecoder().decode(InstanceSpec.self, from: written) == spec)

        // A QEMU instance writes neither connect nor pool, as before.
        var qemu = spec
        qemu.driver = .qemu
        let qemuText = try YAMLEncoder().encode(qemu)
        #expect(qemuText.contains("\ndriver: qemu\n") && !qemuText.contains("connect:") && !qemuText.contains("pool:"))

        // A network of the libvirt driver on another daemon.
        let network = """
            version: 1
            name: n1
            subnet: 192.168.100.0/24
            nat: true
            bridge: nmb-n1
            driver: libvirt
            connect: qemu+ssh://root@rack1/system
            createdAt: 2026-12-03T12:00:00Z
            """
        let networkSpec = try YAMLDecoder().decode(NetworkSpec.self, from: network)
        #expect(networkSpec.driver == .libvirt(connect: "qemu+ssh://root@rack1/system", pool: nil))
        #expect(try YAMLDecoder().decode(NetworkSpec.self, from: YAMLEncoder().encode(networkSpec)) == networkSpec)
        // A network.yaml naming a driver Nimbus does not have is refused, naming it.
        let xen = network.replacingOccurrences(of: "driver: libvirt", with: "driver: xen")
        #expect(throws: (any Error).self) { try YAMLDecoder().decode(NetworkSpec.self, from: xen) }
    }
}

@Suite("config.yaml")
struct ConfigTests {
    @Test("a missing file means the defaults; keys override them")
    func load() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        #expect(try NimbusConfig.load(paths: dir.paths) == NimbusConfig())
        try FileManager.default.createDirectory(at: dir.paths.config, withIntermediateDirectories: true)
        try "cpus: 4\nmemory: 4G\nmirrors:\n  debian: http://127.0.0.1:1/\n".write(
            to: dir.paths.configFile, atomically: true, encoding: .utf8)
        let config = try NimbusConfig.load(paths: dir.paths)
        #expect(config.cpus == 4 && config.memory == .gibibytes(4) && config.disk == .gibibytes(10))
    }

    @Test(
        "a bad value names the file and the key",
        arguments: [
            ("memory: lots\n", "memory \"lots\" is not a size"), ("cpus: [1]\n", "cpus"),
            ("cpus: 2\n  bad: [\n", "config.yaml"),
            ("firmware: efi\n", "firmware: \"efi\" is not one of auto, uefi, bios"),
            ("accelerator: hvf\n", "accelerator: \"hvf\" is not one of auto, kvm, tcg"),
            ("driver: xen\n", "driver: \"xen\" is not one of qemu, libvirt"),
        ])
    func bad(text: String, expected: String) throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        try FileManager.default.createDirectory(at: dir.paths.config, withIntermediateDirectories: true)
        try text.write(to: dir.paths.configFile, atomically: true, encoding: .utf8)
        let error = #expect(throws: NimbusError.self) { try NimbusConfig.load(paths: dir.paths) }
        #expect(error?.code == .invalidArgument)
        #expect(error?.message.contains(expected) == true, "\(error?.message ?? "")")
    }
}

@Suite("Fleet files")
struct FleetFileTests {
    func write(_ text: String, in dir: TemporaryDirectory) throws -> URL {
        let url = dir.url.appending(path: "fleet.yaml")
        try text.write(to: url, atomically: true, encoding: .utf8)
        return url
    }

    @Test("defaults apply to every instance; files are read relative to the fleet file")
    func parse() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        try "#cloud-config\nruncmd: [true]\n".write(
            to: dir.url.appending(path: "db.yaml"), atomically: true, encoding: .utf8)
        try FileManager.default.createDirectory(at: dir.url.appending(path: "site"), withIntermediateDirectories: true)
        let url = try write(
            """
            defaults:
              image: debian:12
              memory: 1G
            instances:
              - name: web
                forwards: ["8080:80"]
                mounts: ["site:/srv"]
                cloud-init: |
                  #cloud-config
                  packages: [nginx]
              - name: db
                cpus: 4
                cloud-init-file: db.yaml
            """, in: dir)
        let fleet = try FleetFile(url: url, config: NimbusConfig())
        #expect(fleet.specs.map(\.name.rawValue) == ["web", "db"])
        #expect(
            fleet.specs.allSatisfy { $0.image == "debian:12" && $0.memory == .gibibytes(1) && $0.fleet == url.path })
        #expect(fleet.specs[0].forwards == [MachineConfig.PortForward(hostPort: 8080, guestPort: 80)])
        #expect(fleet.specs[0].mounts.first?.hostPath == dir.url.appending(path: "site").standardizedFileURL.path)
        #expect(fleet.specs[1].userData == "#cloud-config\nruncmd: [true]\n")
        #expect(fleet.specs[1].cpus == 4)
        // config.yaml's defaults reach `apply` as they reach `launch`, cpu-model and disk among them.
        var config = NimbusConfig()
        config.cpuModel = "max"
        config.disk = .gibibytes(20)
        config.driver = .libvirt
        config.firmware = .uefi
        config.accelerator = .tcg
        let configured = try FleetFile(url: url, config: config)
        #expect(
            configured.specs.allSatisfy {
                $0.cpuModel == "max" && $0.disk == .gibibytes(20) && $0.driver.name == "libvirt" && $0.firmware == .uefi
                    && $0.accelerator == .tcg && $0.image == "debian:12"
            })
        #expect(configured.specs[1].cpus == 4 && configured.specs[0].cpus == config.cpus)
    }

    @Test("volumes: NAME:PATH[:SIZE] per instance, as launch --volume; a bad one is named with its instance")
    func fleetVolumes() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let url = try write(
            """
            instances:
              - name: db
                volumes: ["pgdata:/var/lib/postgresql:20G", "logs:/var/log/app"]
              - name: web
            """, in: dir)
        let fleet = try FleetFile(url: url, config: NimbusConfig())
        #expect(
            fleet.specs[0].volumes == [
                VolumeAttachment(volume: "pgdata", mountPoint: "/var/lib/postgresql"),
                VolumeAttachment(volume: "logs", mountPoint: "/var/log/app"),
            ])
        #expect(fleet.volumeSizes == [try InstanceName("db"): ["pgdata": .gibibytes(20)]])
        #expect(fleet.specs[1].volumes.isEmpty)
        let bad = try write("instances:\n  - name: db\n    volumes: [\"pgdata\"]\n", in: dir)
        let error = #expect(throws: NimbusError.self) { try FleetFile(url: bad, config: NimbusConfig()) }
        #expect(error?.message.contains("(db): volumes \"pgdata\" is not NAME:PATH") == true, "\(error?.message ?? "")")
    }

    @Test("ignition-file: the user's Ignition config, read relative to the fleet file and checked; a bad one is named")
    func fleetIgnition() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let config = #"{"ignition": {"version": "3.3.0"}}"#
        try config.write(to: dir.url.appending(path: "edge.ign"), atomically: true, encoding: .utf8)
        try "{\"ignition\": {\"version\": \"2.2.0\"}}".write(
            to: dir.url.appending(path: "old.ign"), atomically: true, encoding: .utf8)
        let url = try write(
            "instances:\n  - name: edge\n    image: fedora-coreos:stable\n    ignition-file: edge.ign\n", in: dir)
        #expect(try FleetFile(url: url, config: NimbusConfig()).specs.first?.ignition == config)
        let old = try write("instances:\n  - name: edge\n    ignition-file: old.ign\n", in: dir)
        let error = #expect(throws: NimbusError.self) { try FleetFile(url: old, config: NimbusConfig()) }
        #expect(error?.message.contains("old.ign is Ignition spec 2.2.0") == true, "\(error?.message ?? "")")
    }

    @Test(
        "mistakes name the file, the entry and the problem",
        arguments: [
            ("instances:\n  - image: debian:12\n", "instances[0] has no name"),
            ("instances:\n  - name: Web_1\n", "instances[0]: instance name \"Web_1\" is not a valid hostname"),
            ("instances:\n  - name: a\n  - name: a\n", "the name \"a\" is used twice"),
            ("instances:\n  - name: a\n    memory: 1.5.2G\n", "(a): memory \"1.5.2G\" is not a size"),
            ("instances:\n  - name: a\n    cloud-init-file: missing.yaml\n", "missing.yaml cannot be read"),
            ("instances:\n  - name: a\n    ignition-file: missing.ign\n", "ignition-file"),
            ("instances: [\n", "fleet.yaml"),
        ])
    func errors(text: String, expected: String) throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let error = #expect(throws: NimbusError.self) {
            try FleetFile(url: write(text, in: dir), config: NimbusConfig())
        }
        #expect(error?.message.contains(expected) == true, "\(error?.message ?? "")")
    }

    @Test("a public key file must hold an OpenSSH public key")
    func publicKey() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let good = dir.url.appending(path: "id.pub")
        try "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA me@host\n".write(to: good, atomically: true, encoding: .utf8)
        #expect(try readPublicKey(good) == "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA me@host")
        let bad = dir.url.appending(path: "id")
        try "-----BEGIN OPENSSH PRIVATE KEY-----\n".write(to: bad, atomically: true, encoding: .utf8)
        #expect(throws: NimbusError.self) { try readPublicKey(bad) }
        #expect(throws: NimbusError.self) { try readPublicKey(dir.url.appending(path: "missing.pub")) }
    }
}

@Suite("Instance locks")
struct InstanceLockTests {
    /// Records when each holder of a lock started and finished.
    actor Timeline {
        var events: [String] = []
        func add(_ event: String) { events.append(event) }

        /// Waits until `event` is recorded, or at most a minute (then returns: the order tells the rest).
        func wait(for event: String) async {
            for _ in 0..<6000 where !events.contains(event) {
                try? await Task.sleep(for: .milliseconds(10))
            }
        }
    }

    @Test("work on one instance serialises; work on different instances overlaps")
    func serialises() async throws {
        try await TemporaryDirectory.with { dir in
            let store = InstanceStore(paths: dir.paths)
            let timeline = Timeline()
            let web = try InstanceName("web")
            let db = try InstanceName("db")
            // No timing is assumed: a holds web's lock until c has started on db (which cannot happen if
            // locks were not per instance), and b asks for web's lock only once a holds it.
            let hold: @Sendable (InstanceName, String, String?) async throws -> Void = { name, label, until in
                try await store.withLock(name) { _ in
                    await timeline.add("\(label)+")
                    if let until { await timeline.wait(for: until) }
                    await timeline.add("\(label)-")
                }
            }
            async let first: Void = hold(web, "a", "c+")
            await timeline.wait(for: "a+")
            async let second: Void = hold(web, "b", nil)
            async let other: Void = hold(db, "c", nil)
            _ = try await (first, second, other)
            let events = await timeline.events
            // b starts only after a ended; c runs while a holds web's lock.
            let index = { (event: String) in events.firstIndex(of: event) ?? -1 }
            #expect(index("b+") > index("a-"))
            #expect(index("c+") < index("a-"))
        }
    }
}
