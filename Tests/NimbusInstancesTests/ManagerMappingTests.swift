import Foundation
import NimbusCore
import NimbusDrivers
import NimbusMachines
import NimbusSeed
import NimbusTestSupport
import Testing
import Yams

@testable import NimbusInstances

@Suite("From an instance spec to a seed and a machine")
struct ManagerMappingTests {
    func spec(in dir: TemporaryDirectory) throws -> InstanceSpec {
        var spec = InstanceSpec(name: try InstanceName("web"), image: "debian:12")
        spec.cpus = 3
        spec.memory = .mebibytes(1536)
        spec.locale = "en_GB.UTF-8"
        spec.timezone = "Europe/Paris"
        spec.mounts = [try Mount(parsing: "\(dir.url.path):/src")]
        spec.forwards = [try MachineConfig.PortForward(parsing: "8080:80")]
        spec.ephemeral = try EphemeralDisk(parsing: "1G:/scratch")
        return spec
    }

    @Test("the personality carries the hostname, locale, timezone, keys, MAC-matched NIC and mounts")
    func personality() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let manager = InstanceManager(paths: dir.paths, config: NimbusConfig())
        let hostKey = SSHKeyPair(comment: "host")
        let config = manager.builder.personality(
            try spec(in: dir), userKeys: ["ssh-ed25519 AAAA me"], hostKey: hostKey, user: "nimbus")
        #expect(config.hostname == "web")
        #expect(config.locale == "en_GB.UTF-8" && config.timezone == "Europe/Paris")
        #expect(config.defaultUser?.name == "nimbus")
        #expect(config.defaultUser?.sshAuthorizedKeys == ["ssh-ed25519 AAAA me"])
        #expect(config.hostKeys?.ed25519Public == hostKey.publicKeyLine)
        #expect(config.network.interfaces.first?.macAddress == MachineConfig(name: "web").macAddress)
        #expect(config.mounts.contains { $0 == ["nimbus0", "/src", "virtiofs", "defaults,nofail", "0", "0"] })
        #expect(config.mounts.contains { $0.first == "LABEL=nimbus-scratch" && $0[1] == "/scratch" })
        // 9p when asked for, with the options its transport needs.
        var ninep = try spec(in: dir)
        ninep.mountType = .ninep
        let shared = manager.builder.personality(ninep, userKeys: [], hostKey: hostKey, user: "nimbus")
        #expect(shared.mounts.contains { $0.first == "nimbus0" && $0[2] == "9p" && $0[3].hasPrefix("trans=virtio") })
        #expect(
            manager.planner.machineConfig(
                ninep, state: InstanceState(), in: manager.store.directory(try InstanceName("web"))
            )
            .shares.map(\.transport) == [.ninep])
    }

    @Test("the machine gets the overlay, the scratch disk, the seed, the forwards and the shares")
    func machine() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let manager = InstanceManager(paths: dir.paths, config: NimbusConfig())
        let folder = manager.store.directory(try InstanceName("web"))
        // The port of the last start is kept while free, and replaced when something else holds it.
        let (held, port) = try Self.listen()
        defer { close(held) }
        var state = InstanceState()
        state.sshPort = port
        let machine = manager.planner.machineConfig(try spec(in: dir), state: state, in: folder)
        #expect(machine.cpus == 3 && machine.memory == .mebibytes(1536))
        #expect(machine.disks.map(\.path) == [folder.disk.path, folder.ephemeralDisk.path])
        #expect(machine.disks.last?.format == .raw)
        #expect(machine.seed == .noCloud(iso: folder.seed.path))
        #expect(machine.network.forwards == [MachineConfig.PortForward(hostPort: 8080, guestPort: 80)])
        #expect(machine.network.sshHostPort == nil)
        #expect(machine.shares == [MachineConfig.Share(hostPath: dir.url.path, tag: "nimbus0")])
        #expect(machine.firmware == .uefi())
        #expect(machine.kernel == nil)

        var direct = try spec(in: dir)
        direct.firmware = .bios
        direct.kernel = .init(kernel: "/k/vmlinuz", initrd: "/k/initrd.img", commandLine: "root=LABEL=nimbus-root")
        let booted = manager.planner.machineConfig(direct, state: InstanceState(), in: folder)
        #expect(booted.kernel == direct.kernel)
        #expect(booted.firmware == .bios)
    }

    /// A socket listening on a free loopback port.
    static func listen() throws -> (Int32, UInt16) {
        let (fd, port) = try #require(Loopback.bindSocket(port: 0))
        try #require(Glibc.listen(fd, 1) == 0)
        return (fd, port)
    }

    @Test("the scratch disk is a fresh labelled ext4 filesystem")
    func ephemeral() async throws {
        try await TemporaryDirectory.with { dir in
            let disk = dir.url.appending(path: "ephemeral.img")
            try await Ephemeral.format(disk, size: .mebibytes(64))
            let blkid = try await ProgramRunner.run("blkid", ["-o", "export", disk.path])
            #expect(blkid.contains("LABEL=nimbus-scratch"))
            #expect(blkid.contains("TYPE=ext4"))
        }
    }

    @Test("ssh-config prints a block with the pinned host key")
    func sshConfig() async throws {
        try await TemporaryDirectory.with { dir in
            let manager = InstanceManager(paths: dir.paths, config: NimbusConfig())
            let name = try InstanceName("web")
            _ = try await manager.store.create(InstanceSpec(name: name, image: "x")) { _ in
                var state = InstanceState()
                state.sshPort = 2222
                return state
            }
            let block = try manager.sshConfigBlock(name)
            #expect(block.contains("Host web\n"))
            #expect(block.contains("Port 2222"))
            #expect(block.contains("StrictHostKeyChecking yes"))
            #expect(block.contains("HostKeyAlias nimbus-web"))
        }
    }

    @Test("the installation key is made once, 0600, and read back")
    func installationKey() async throws {
        try await TemporaryDirectory.with { dir in
            let manager = InstanceManager(paths: dir.paths, config: NimbusConfig())
            let first = try await manager.installationKey()
            let second = try await manager.installationKey()
            #expect(first.publicKeyLine == second.publicKeyLine)
            let attributes = try FileManager.default.attributesOfItem(
                atPath: dir.paths.keys.appending(path: "id_ed25519").path)
            #expect((attributes[.posixPermissions] as? Int) == 0o600)
            let derived = try await ProgramRunner.run(
                "ssh-keygen", ["-y", "-f", dir.paths.keys.appending(path: "id_ed25519").path])
            #expect(derived.hasPrefix(first.publicKeyLine.split(separator: " ").prefix(2).joined(separator: " ")))
        }
    }

    @Test("snapshot names are checked before qemu-img sees them", arguments: ["", "-x", "a b", "a/b"])
    func snapshotNames(name: String) {
        #expect(throws: NimbusError.self) { try InstanceManager.checkSnapshotName(name) }
    }
}

@Suite("User-data kept byte for byte")
struct UserDataBytesTests {
    @Test("gzip'ed user-data survives instance.yaml and reaches the seed untouched")
    func gzip() async throws {
        try await TemporaryDirectory.with { dir in
            let plain = dir.url.appending(path: "user-data")
            try "#cloud-config\nruncmd: [true]\n".write(to: plain, atomically: true, encoding: .utf8)
            try await ProgramRunner.run("gzip", ["-n", plain.path])
            let original = try [UInt8](Data(contentsOf: dir.url.appending(path: "user-data.gz")))

            var spec = InstanceSpec(name: try InstanceName("web"), image: "debian:12")
            spec.setUserData(original)
            #expect(spec.userDataEncoding == .base64)
            let stored = try YAMLDecoder().decode(InstanceSpec.self, from: try YAMLEncoder().encode(spec))
            let bytes = try #require(stored.userDataBytes)
            #expect(bytes == original)

            let userData = try UserData(bytes: bytes, source: "test")
            #expect(userData.kind == .gzip)
            let seed = try NoCloudSeed(config: InstanceConfig(), name: "web", userData: userData)
            #expect(seed.userData == original)
        }
    }

    @Test("text user-data stays readable text in instance.yaml")
    func text() throws {
        var spec = InstanceSpec(name: try InstanceName("web"), image: "debian:12")
        spec.setUserData(Array("#cloud-config\nhostname: a\n".utf8))
        #expect(spec.userDataEncoding == .text)
        #expect(spec.userData == "#cloud-config\nhostname: a\n")
        #expect(spec.userDataBytes == Array("#cloud-config\nhostname: a\n".utf8))
    }
}
