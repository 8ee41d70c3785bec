import Foundation
import NimbusCore
import NimbusDrivers
import NimbusMachines
import NimbusQEMU
import NimbusSeed
import NimbusTestSupport
import Testing

@testable import NimbusInstances

/// Data volumes without a guest: names, `--volume` parsing, the store (with the real qemu-img), one holder
/// at a time, and what an attached volume gives the guest and the machine.
@Suite("Volumes", .requires(.programs("qemu-img")))
struct VolumeTests {
    @Test(
        "--volume takes NAME:PATH and NAME:PATH:SIZE, and refuses the rest naming the problem",
        arguments: [
            ("data", "is not NAME:PATH"), ("data:srv", "absolute path"), ("data:/", "absolute path"),
            ("data:/srv/../etc", "absolute path"), ("Data:/srv", "volume name \"Data\""),
            ("data:/srv:1k", "too small"), ("data:/srv:lots", "is not a size"), ("a:/b:1G:x", "is not NAME:PATH"),
        ])
    func badAttachment(text: String, expected: String) {
        let error = #expect(throws: NimbusError.self) { try VolumeAttachment.parse(text) }
        #expect(error?.code == .invalidArgument)
        #expect(error?.message.contains(expected) == true, "\(error?.message ?? "")")
    }

    @Test("names become a serial (at most 20 bytes) and a label (at most 16) that tell volumes apart")
    func serialAndLabel() throws {
        let (parsed, size) = try VolumeAttachment.parse("data:/srv:2G")
        #expect(parsed == VolumeAttachment(volume: "data", mountPoint: "/srv") && size == .gibibytes(2))
        #expect(try VolumeAttachment.parse("data:/srv").size == nil)
        let short = VolumeSpec(name: "data", size: .gibibytes(1))
        #expect(short.serial == "vol-data" && short.label == "nv-data")
        #expect(short.guestDevice == "/dev/disk/by-id/virtio-vol-data")
        let long = VolumeSpec(name: String(repeating: "a", count: 40), size: .gibibytes(1))
        let other = VolumeSpec(name: String(repeating: "a", count: 39) + "b", size: .gibibytes(1))
        #expect(long.serial.utf8.count <= 20 && long.label.utf8.count <= 16)
        #expect(long.serial != other.serial && long.label != other.label)
    }

    @Test(
        "a libvirt instance fixes a volume's place in its pool; a launch that fails gives it back as it was; other drivers are refused"
    )
    func libvirtPlace() async throws {
        try await TemporaryDirectory.with { dir in
            let manager = InstanceManager(paths: dir.paths, config: NimbusConfig())
            let volumes = manager.volumes
            _ = try await volumes.create(name: "data", size: .mebibytes(64))
            let web = try InstanceName("web")
            let attachment = VolumeAttachment(volume: "data", mountPoint: "/srv")
            let libvirt = DriverChoice.libvirt(connect: nil, pool: nil)
            let attached = try await volumes.attach([attachment], sizes: [:], to: web, driver: libvirt)
            let placed = try volumes.store.load("data").libvirt
            #expect(placed?.volume.hasPrefix("nimbus-vol-data-") == true && placed?.serves(libvirt) == true)
            // The machine uses the pool volume by that name.
            var spec = InstanceSpec(name: web, image: "debian:12")
            spec.volumes = [attachment]
            let machine = manager.planner.machineConfig(spec, state: InstanceState(), in: manager.store.directory(web))
            #expect(machine.disks.last?.dataVolume == placed?.volume)
            // The launch failed: the volume is free and in no pool again, so QEMU instances may use it.
            await volumes.release(attached, of: web)
            #expect(try volumes.store.load("data").libvirt == nil && volumes.store.load("data").attachedTo == nil)
            // Once placed (attached and kept), a QEMU instance is refused, naming where it lives.
            _ = try await volumes.attach([attachment], sizes: [:], to: web, driver: libvirt)
            await volumes.detach(from: web)
            let refused = #expect(throws: NimbusError.self) {
                try volumes.check([attachment], sizes: [:], for: try InstanceName("db"), taken: [])
            }
            #expect(refused?.message.contains("lives in volume nimbus-vol-data-") == true, "\(refused?.message ?? "")")
        }
    }

    @Test(
        "create, list, info, resize (grow only) and delete, with real qcow2 disks; a volume serves one instance at a time and outlives it"
    )
    func lifecycle() async throws {
        try await TemporaryDirectory.with { dir in
            let manager = InstanceManager(paths: dir.paths, config: NimbusConfig())
            let volumes = manager.volumes
            let made = try await volumes.create(name: "data", size: .mebibytes(64))
            #expect(made.size == "64M" && made.attachedTo == nil)
            let exists = await #expect(throws: NimbusError.self) {
                try await volumes.create(name: "data", size: .mebibytes(64))
            }
            #expect(exists?.code == .alreadyExists)
            let small = await #expect(throws: NimbusError.self) {
                try await volumes.create(name: "tiny", size: .mebibytes(1))
            }
            #expect(small?.code == .invalidArgument && !volumes.store.exists("tiny"))
            #expect(volumes.list().map(\.name) == ["data"])

            // Grow only.
            let shrink = await #expect(throws: NimbusError.self) {
                try await volumes.resize("data", size: .mebibytes(32))
            }
            #expect(shrink?.code == .invalidArgument && shrink?.message.contains("only grows") == true)
            #expect(try await volumes.resize("data", size: .mebibytes(128)).size == "128M")
            let image = try await ProgramRunner.run(
                "qemu-img", ["info", "--output=json", volumes.store.disk("data").path])
            #expect(image.contains("\"virtual-size\": 134217728"), "\(image)")

            // web takes it (made on the fly for `logs`); db cannot while web exists.
            let web = try InstanceName("web")
            let db = try InstanceName("db")
            try FileManager.default.createDirectory(
                at: manager.store.directory(web).url, withIntermediateDirectories: true)
            try "name: web\nimage: debian:12\n".write(
                to: manager.store.directory(web).spec, atomically: true, encoding: .utf8)
            let attachments = [
                VolumeAttachment(volume: "data", mountPoint: "/srv"),
                VolumeAttachment(volume: "logs", mountPoint: "/var/log/app"),
            ]
            let madeForWeb = try await volumes.attach(attachments, sizes: ["logs": .mebibytes(32)], to: web)
            #expect(madeForWeb.made == ["logs"] && madeForWeb.before.map(\.name) == ["data"])
            #expect(try volumes.info("data").attachedTo == "web")
            #expect(try volumes.info("logs").attachedTo == "web")
            let taken = #expect(throws: NimbusError.self) {
                try volumes.check([attachments[0]], sizes: [:], for: db, taken: [])
            }
            #expect(taken?.code == .alreadyExists && taken?.message.contains("attached to web") == true)
            let attachTaken = await #expect(throws: (any Error).self) {
                _ = try await volumes.attach([attachments[0]], sizes: [:], to: db)
            }
            #expect((attachTaken as? NimbusError)?.code == .alreadyExists)
            let inUse = await #expect(throws: (any Error).self) { try await volumes.delete("data") }
            #expect((inUse as? NimbusError)?.message.contains("attached to web") == true)

            // The machine gets each volume's disk with its serial, after the root disk; the guest mounts it by
            // label and formats a blank one at boot.
            var spec = InstanceSpec(name: web, image: "debian:12")
            spec.volumes = attachments
            let machine = manager.planner.machineConfig(spec, state: InstanceState(), in: manager.store.directory(web))
            #expect(machine.disks.dropFirst().map(\.serial) == ["vol-data", "vol-logs"])
            #expect(machine.disks[1].path == volumes.store.disk("data").path)
            let argv = try QEMUCommandLine.machine(
                machine, in: manager.store.directory(web).machine, accelerator: .tcg, sshHostPort: 2222
            ).arguments
            #expect(argv.contains { $0.contains("virtio-blk-pci,drive=disk1,id=disk1-dev,serial=vol-data") }, "\(argv)")
            var config = InstanceConfig()
            try manager.builder.addVolumes(attachments, to: &config)
            #expect(
                config.volumes == [
                    InstanceConfig.DataVolume(
                        device: "/dev/disk/by-id/virtio-vol-data", label: "nv-data", mountPoint: "/srv"),
                    InstanceConfig.DataVolume(
                        device: "/dev/disk/by-id/virtio-vol-logs", label: "nv-logs", mountPoint: "/var/log/app"),
                ])
            // cloud-init mounts each by label and runs the format-and-grow script at every boot.
            let seed = try NoCloudSeed(config: config, name: "web")
            let userData = String(decoding: seed.files.first { $0.name == "user-data" }?.contents ?? [], as: UTF8.self)
            #expect(userData.contains("- - LABEL=nv-data\n  - /srv\n  - ext4\n"), "\(userData)")
            #expect(
                userData.contains(
                    "  - nimbus-volume\n  - /dev/disk/by-id/virtio-vol-logs\n  - nv-logs\n  - /var/log/app"),
                "\(userData)")

            // Checks before anything is written: a volume twice, a mount point twice or on a share's.
            let twice = #expect(throws: NimbusError.self) {
                try volumes.check([attachments[0], attachments[0]], sizes: [:], for: web, taken: [])
            }
            #expect(twice?.message.contains("given twice") == true)
            let onShare = #expect(throws: NimbusError.self) {
                try volumes.check([attachments[0]], sizes: [:], for: web, taken: ["/srv"])
            }
            #expect(onShare?.message.contains("mounted there already") == true)
            let missing = #expect(throws: NimbusError.self) {
                try volumes.check([VolumeAttachment(volume: "nope", mountPoint: "/x")], sizes: [:], for: web, taken: [])
            }
            #expect(missing?.code == .notFound && missing?.message.contains("volume create nope") == true)

            // Given back: free again, data kept; a failed launch's release removes what it made.
            #expect(await volumes.detach(from: web).sorted() == ["data", "logs"])
            #expect(try volumes.info("data").attachedTo == nil)
            let madeForDB = try await volumes.attach(
                [VolumeAttachment(volume: "scratch", mountPoint: "/s")], sizes: ["scratch": .mebibytes(32)], to: db)
            await volumes.release(madeForDB, of: db)
            #expect(!volumes.store.exists("scratch"))
            // A holder whose instance folder is gone holds nothing.
            _ = try await volumes.attach([attachments[0]], sizes: [:], to: db)
            #expect(try volumes.info("data").attachedTo == nil)
            try await volumes.delete("data")
            #expect(!volumes.store.exists("data") && volumes.list().map(\.name) == ["logs"])
        }
    }
}
