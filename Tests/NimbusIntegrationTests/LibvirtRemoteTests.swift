import Foundation
import NimbusCore
import NimbusTestSupport
import Testing

@testable import NimbusLibvirt
@testable import NimbusMachines

/// Instances on a remote libvirt host: a second libvirtd in a network namespace made by the test
/// (`RemoteLibvirtHost`), reached over qemu+tcp and qemu+ssh, with the real Debian guest under TCG.
@Suite(
    "libvirt on a remote host", .serialized,
    .requires(.guest, .libvirt, .programs("ip", "unshare", "nsenter", "sshd", "ssh-keygen")))
struct LibvirtRemoteTests {
    static var image: String { "file://" + (Prerequisites.guestImage?.path ?? "/missing") }

    static func launchArguments(_ name: String, uri: String, extra: [String] = []) -> [String] {
        [
            "launch", "--name", name, "--driver", "libvirt", "--connect", uri, "--accel", "tcg", "--memory", "1024M",
            "--timeout", "900",
        ] + extra + [image]
    }

    @Test(
        "a launch on the remote libvirtd boots the guest there, exec reaches it, stop leaves a shut-off domain, delete --purge leaves the pool as it was but for the base image, and a second launch (over qemu+ssh) uploads nothing and its log is read over SSH"
    )
    func launchOnRemoteHost() async throws {
        let slot = try await GuestSlot(expectedSeconds: 300)
        defer { withExtendedLifetime(slot) {} }
        try await RemoteLibvirtHost.with { host in
            try await TemporaryDirectory.with("nimbus-remote") { home in
                let name = "rm-\(UUID().uuidString.prefix(6).lowercased())"
                let domain = LibvirtDomainXML.domainName(for: name)
                // Before: the pool holds a volume of someone else's, which Nimbus must leave alone.
                _ = try await host.virsh(
                    ["pool-define-as", "nimbus", "dir", "--target", "/var/lib/libvirt/images/nimbus"])
                _ = try await host.virsh(["pool-build", "nimbus"])
                _ = try await host.virsh(["pool-start", "nimbus"])
                _ = try await host.virsh(["vol-create-as", "nimbus", "someone-else.qcow2", "16M", "--format", "qcow2"])
                let before = try await host.volumes(in: "nimbus")
                #expect(before == ["someone-else.qcow2"])

                let launch = try await NimbusBinary.run(Self.launchArguments(name, uri: host.tcpURI), home: home.url)
                #expect(launch.status == 0, "\(launch.standardError)")
                #expect(launch.standardError.contains("uploading base image"), "\(launch.standardError)")
                #expect(launch.standardError.contains("verified on arrival"))
                // The guest runs on the remote host, not on this one's libvirtd.
                #expect(try await host.virsh(["domstate", domain]).standardOutput.contains("running"))
                #expect(try await LibvirtDaemon.domains().contains(domain) == false)
                let volumes = try await host.volumes(in: "nimbus")
                let base = volumes.filter { $0.hasPrefix("nimbus-base-") }
                let expectedAfter = (before + base).sorted()
                // The base image and the marker that says its copy finished.
                #expect(
                    base.count == 2 && base[0].hasSuffix(".qcow2") && base[1].hasSuffix(".qcow2.complete"), "\(volumes)"
                )
                #expect(volumes.contains { $0.hasSuffix("-disk.qcow2") }, "\(volumes)")
                #expect(volumes.contains { $0.hasSuffix("-seed.iso") }, "\(volumes)")
                #expect(!volumes.contains { $0.contains(".part") }, "\(volumes)")
                let diskXML = try await host.virsh(["dumpxml", domain]).standardOutput
                #expect(diskXML.contains("/var/lib/libvirt/images/nimbus/"), "\(diskXML)")

                let hostname = try await NimbusBinary.run(["exec", name, "--", "hostname"], home: home.url)
                #expect(hostname.status == 0, "\(hostname.standardError)")
                #expect(hostname.standardOutput.trimmingCharacters(in: .whitespacesAndNewlines) == name)
                let info = try await NimbusBinary.run(["info", name, "--format", "json"], home: home.url)
                #expect(info.standardOutput.contains("@\(host.address):"), "\(info.standardOutput)")
                // The serial log is the remote daemon's, on that host: qemu+tcp gives no way to its files.
                let tcpLogs = try await NimbusBinary.run(["logs", name], home: home.url)
                #expect(tcpLogs.status == NimbusError.Code.unsupported.exitStatus, "\(tcpLogs.standardError)")
                #expect(tcpLogs.standardError.contains("not a qemu+ssh URI"), "\(tcpLogs.standardError)")
                #expect(tcpLogs.standardError.contains(LibvirtRemote.serialLogPath(domain: domain)))

                let stop = try await NimbusBinary.run(["stop", name, "--timeout", "180"], home: home.url)
                #expect(stop.status == 0, "\(stop.standardError)")
                // The domain is persistent: stopped is shut off, still defined, until purge.
                let state = try await host.virsh(["domstate", domain])
                #expect(state.standardOutput.contains("shut off"), "\(state.standardOutput)\(state.standardError)")
                // Not started again here: a start defines the domain from the same placed volumes as the launch
                // did, and the local libvirt scenario starts a stopped instance (a boot less in CI).

                let delete = try await NimbusBinary.run(["delete", "--purge", name], home: home.url)
                #expect(delete.status == 0, "\(delete.standardError)")
                #expect(try await host.volumes(in: "nimbus") == expectedAfter)
                #expect(try await host.virsh(["domstate", domain]).status != 0)

                // The same image again, this time over qemu+ssh: found by its SHA-256 on the host, not uploaded.
                // Not waited for (exec and stop/start reached the remote guest above): it runs, and its boot
                // shows in the log the remote daemon keeps on its host, which qemu+ssh reaches.
                let second = "rm2-\(UUID().uuidString.prefix(6).lowercased())"
                let launch2 = try await NimbusBinary.run(
                    Self.launchArguments(second, uri: host.sshURI, extra: ["--no-wait"]), home: home.url)
                #expect(launch2.status == 0, "\(launch2.standardError)")
                #expect(!launch2.standardError.contains("uploading base image"), "\(launch2.standardError)")
                let domain2 = LibvirtDomainXML.domainName(for: second)
                #expect(try await host.virsh(["domstate", domain2]).standardOutput.contains("running"))
                let list = try await NimbusBinary.run(["list", "--format", "json"], home: home.url)
                #expect(list.status == 0 && list.standardOutput.contains(second), "\(list.standardOutput)")
                // Over qemu+ssh, `logs` reads the log the remote daemon keeps on its host (in the namespace's own
                // /var/log/libvirt, which this host's files do not show): the guest's kernel, once it booted.
                var logs = try await NimbusBinary.run(["logs", second], home: home.url)
                let deadline = ContinuousClock.now + .seconds(300)
                while logs.status == 0, !logs.standardOutput.contains("Linux version"), ContinuousClock.now < deadline {
                    try await Task.sleep(for: .seconds(2))
                    logs = try await NimbusBinary.run(["logs", second], home: home.url)
                }
                #expect(logs.status == 0, "\(logs.standardError)")
                #expect(logs.standardOutput.contains("Linux version"), "\(logs.standardOutput.suffix(2000))")
                // Memory is judged by the remote host's own (libvirt's node info), named in the error.
                let big = try await NimbusBinary.run(
                    Self.launchArguments("big", uri: host.sshURI, extra: ["--memory", "100000G"]), home: home.url)
                #expect(big.status == 64, "\(big.standardError)")
                #expect(big.standardError.contains("is more than \(host.address)'s"), "\(big.standardError)")
                #expect(try await host.volumes(in: "nimbus").filter { $0.hasPrefix("nimbus-base-") } == base)
                let delete2 = try await NimbusBinary.run(["delete", "--purge", second], home: home.url)
                #expect(delete2.status == 0, "\(delete2.standardError)")
                #expect(try await host.volumes(in: "nimbus") == expectedAfter)
            }
        }
    }

    @Test(
        "over qemu+ssh: a machine with a disk and a seed is placed in the pool, runs, answers status, stops, and its volumes go"
    )
    func overSSH() async throws {
        try await RemoteLibvirtHost.with { host in
            try await TemporaryDirectory.with("nimbus-remote-ssh") { home in
                // A small base image and an overlay on it, as NimbusInstances makes them.
                let base = home.url.appending(path: "base.qcow2")
                try await ProgramRunner.run("qemu-img", ["create", "-q", "-f", "qcow2", base.path, "64M"])
                let overlay = home.url.appending(path: "machine/disk.qcow2")
                try FileManager.default.createDirectory(
                    at: overlay.deletingLastPathComponent(), withIntermediateDirectories: true)
                try await ProgramRunner.run(
                    "qemu-img", ["create", "-q", "-f", "qcow2", "-b", base.path, "-F", "qcow2", overlay.path, "128M"])
                let seed = home.url.appending(path: "seed.iso")
                try Data(repeating: 0x5a, count: 300_000).write(to: seed)
                // A sparse scratch disk: 64 MiB with data only at 32 MiB, sent as holes and data.
                let scratch = home.url.appending(path: "scratch.img")
                #expect(FileManager.default.createFile(atPath: scratch.path, contents: nil))
                let handle = try FileHandle(forWritingTo: scratch)
                try handle.seek(toOffset: 32 << 20)
                try handle.write(contentsOf: Data("nimbus scratch".utf8))
                try handle.truncate(atOffset: 64 << 20)
                try handle.close()

                var config = MachineConfig(name: "ssh-\(UUID().uuidString.prefix(6).lowercased())")
                config.cpus = 1
                config.memory = .mebibytes(128)
                config.accelerator = .tcg
                config.disks = [
                    MachineConfig.Disk(path: overlay.path), MachineConfig.Disk(path: scratch.path, format: .raw),
                ]
                config.seed = .noCloud(iso: seed.path)
                let directory = MachineDirectory(overlay.deletingLastPathComponent())
                let driver = LibvirtDriver(uri: host.sshURI, hostFactsCache: nil)
                try driver.checkConnection()

                // A pool that exists already, holding what a daemon that died while copying the base image
                // leaves: the base volume's name without its completion marker.
                _ = try await host.virsh([
                    "pool-define-as", "nimbus", "dir", "--target", "/var/lib/libvirt/images/nimbus",
                ])
                _ = try await host.virsh(["pool-build", "nimbus"])
                _ = try await host.virsh(["pool-start", "nimbus"])
                let baseName = LibvirtStorage.baseVolumeName(
                    sha256: try await LibvirtStorage.sha256(of: base), format: .qcow2)
                let broken = try await host.virsh(["vol-create-as", "nimbus", baseName, "1M", "--format", "raw"])
                #expect(broken.status == 0, "\(broken.standardError)")

                let running = try await driver.start(config, in: directory)
                #expect(running.sshHost == host.address)
                #expect(await driver.status(of: directory).state == .running)
                let domain = LibvirtDomainXML.domainName(for: config.name)
                #expect(try await host.virsh(["domstate", domain]).standardOutput.contains("running"))
                let volumes = try await host.volumes(in: "nimbus")
                #expect(volumes.count == 6, "base, its marker, overlay, scratch, seed and UEFI variables: \(volumes)")
                let scratchVolume = try #require(volumes.first { $0.hasSuffix("-disk1.raw") })
                let back = home.url.appending(path: "scratch-back.img")
                let download = try await host.virsh(["vol-download", "--pool", "nimbus", scratchVolume, back.path])
                #expect(download.status == 0, "\(download.standardError)")
                #expect(try Data(contentsOf: back) == (try Data(contentsOf: scratch)))
                // The broken copy was replaced by the real image: qemu-img opened it as the overlay's backing file.
                let baseInfo = try await host.virsh(["vol-info", "--pool", "nimbus", baseName, "--bytes"])
                #expect(baseInfo.standardOutput.contains("67108864"), "\(baseInfo.standardOutput)")
                // The forward listens on the remote host's addresses, not on its loopback only.
                let xml = try await host.virsh(["dumpxml", domain]).standardOutput
                #expect(xml.contains("hostfwd=tcp:0.0.0.0:\(running.sshHostPort ?? 0)-:22"), "\(xml)")

                let outcome = try await driver.stop(directory, timeout: .seconds(2), progress: nil)
                #expect(outcome.endedBy != .alreadyStopped)
                #expect(await driver.status(of: directory).state == .stopped)

                // A disk that vanished from the pool is an error naming it, never a fresh disk made silently.
                let disk = volumes.first { $0.hasSuffix("-disk.qcow2") } ?? "?"
                _ = try await host.virsh(["vol-delete", "--pool", "nimbus", disk])
                let gone = await #expect(throws: NimbusError.self) { try await driver.start(config, in: directory) }
                #expect(gone?.code == .notFound)
                #expect(gone?.message.contains(disk) == true, "\(gone?.message ?? "")")
                #expect(gone?.message.contains("delete --purge") == true)

                try await driver.deleteStorage(directory)
                #expect(try await host.volumes(in: "nimbus").filter { !$0.hasPrefix("nimbus-base-") }.isEmpty)
            }
        }
    }

    @Test("two machines of one image placed at once both start, and the image is in the pool once")
    func concurrentPlacement() async throws {
        try await RemoteLibvirtHost.with { host in
            try await TemporaryDirectory.with("nimbus-remote-twice") { home in
                // 24 MiB of data, so the uploads overlap.
                let raw = home.url.appending(path: "base.raw")
                try await ProgramRunner.run(
                    "dd", ["if=/dev/urandom", "of=\(raw.path)", "bs=1M", "count=24", "status=none"])
                let base = home.url.appending(path: "base.qcow2")
                try await ProgramRunner.run("qemu-img", ["convert", "-q", "-O", "qcow2", raw.path, base.path])
                let driver = LibvirtDriver(uri: host.tcpURI, hostFactsCache: nil)
                let names = (0..<2).map { "tw\($0)-\(UUID().uuidString.prefix(6).lowercased())" }
                try await withThrowingTaskGroup(of: Void.self) { group in
                    for name in names {
                        let directory = MachineDirectory(home.url.appending(path: name))
                        let overlay = directory.url.appending(path: "disk.qcow2")
                        try FileManager.default.createDirectory(at: directory.url, withIntermediateDirectories: true)
                        try await ProgramRunner.run(
                            "qemu-img", ["create", "-q", "-f", "qcow2", "-b", base.path, "-F", "qcow2", overlay.path])
                        var config = MachineConfig(name: name)
                        config.cpus = 1
                        config.memory = .mebibytes(128)
                        config.accelerator = .tcg
                        config.firmware = .bios
                        config.disks = [MachineConfig.Disk(path: overlay.path)]
                        group.addTask { _ = try await driver.start(config, in: directory) }
                    }
                    try await group.waitForAll()
                }
                let volumes = try await host.volumes(in: "nimbus")
                #expect(
                    volumes.filter { $0.hasPrefix("nimbus-base-") }.count == 2, "one base and its marker: \(volumes)")
                #expect(!volumes.contains { $0.contains(".part-") }, "\(volumes)")
                for name in names {
                    let directory = MachineDirectory(home.url.appending(path: name))
                    #expect(await driver.status(of: directory).state == .running)
                    try await driver.kill(directory)
                    try await driver.deleteStorage(directory)
                }
                #expect(try await host.volumes(in: "nimbus").count == 2)
            }
        }
    }

    @Test(
        "a pool without room fails the upload naming the pool and the space needed, leaving no volume and no instance; a host that does not answer is a network error"
    )
    func faults() async throws {
        try await RemoteLibvirtHost.with { host in
            try await TemporaryDirectory.with("nimbus-remote-faults") { home in
                // A pool directory on a 64 MiB tmpfs on the remote host: too small for the 358 MiB image.
                let target = "/var/lib/libvirt/images/nimbus-small"
                try await host.runInside("mkdir", ["-p", target])
                try await host.runInside("mount", ["-t", "tmpfs", "-o", "size=64m", "tmpfs", target])
                let name = "full-\(UUID().uuidString.prefix(6).lowercased())"
                let full = try await NimbusBinary.run(
                    Self.launchArguments(name, uri: host.tcpURI, extra: ["--pool", "nimbus-small", "--no-wait"]),
                    home: home.url)
                #expect(full.status == NimbusError.Code.unsupported.exitStatus, "\(full.standardError)")
                #expect(full.standardError.contains("storage pool nimbus-small"), "\(full.standardError)")
                #expect(full.standardError.contains("needs"))
                #expect(try await host.volumes(in: "nimbus-small").isEmpty)
                #expect(try await host.virsh(["pool-info", "nimbus-small"]).status == 0)
                let list = try await NimbusBinary.run(["list", "--format", "json"], home: home.url)
                #expect(!list.standardOutput.contains(name), "\(list.standardOutput)")

                let silent = "qemu+tcp://\(host.silentAddress)/system"
                let error = #expect(throws: NimbusError.self) { try LibvirtConnection(uri: silent) }
                #expect(error?.code == .network, "\(error?.message ?? "")")
                #expect(error?.message.contains(host.silentAddress) == true, "\(error?.message ?? "")")
                #expect(error?.message.contains("does not answer") == true, "\(error?.message ?? "")")

                // delete --purge of an instance on a host that does not answer keeps it, naming its volumes.
                let machine = MachineDirectory(home.url.appending(path: "gone"))
                try FileManager.default.createDirectory(at: machine.url, withIntermediateDirectories: true)
                try LibvirtStorage.save(
                    LibvirtStorage.Record(
                        uri: silent, pool: "nimbus", token: "abc123", volumes: ["nimbus-gone-abc123-disk.qcow2"],
                        diskCreated: true), in: machine)
                let purge = await #expect(throws: NimbusError.self) {
                    try await LibvirtDriver(uri: silent, hostFactsCache: nil).deleteStorage(machine)
                }
                #expect(purge?.code == .network)
                #expect(purge?.message.contains("nimbus-gone-abc123-disk.qcow2") == true, "\(purge?.message ?? "")")
                #expect(purge?.message.contains("run the command again") == true)
                #expect(LibvirtStorage.record(machine) != nil)
            }
        }
    }
}

/// `--pool` mistakes, through the real binary.
@Suite("launch --pool")
struct LibvirtPoolFlagTests {
    @Test("--pool with --driver qemu is a usage error, and nothing is written")
    func poolWithQEMU() async throws {
        try await TemporaryDirectory.with("nimbus-pool-flag") { home in
            let result = try await NimbusBinary.run(
                ["launch", "--no-wait", "--driver", "qemu", "--pool", "fast", "file:///missing.qcow2"], home: home.url)
            #expect(result.status == 64)
            #expect(result.standardError.contains("--pool needs --driver libvirt"), "\(result.standardError)")
            let instances = (try? FileManager.default.contentsOfDirectory(atPath: home.paths.instances.path)) ?? []
            #expect(instances.isEmpty)
        }
    }
}
