import Foundation
import NimbusCore
import NimbusMachines
import NimbusQEMU
import NimbusTestSupport
import Testing

/// Boots the real guest image (NIMBUS_TEST_IMAGE_DIR) under QEMU through NimbusMachines. Each boot works
/// on a qcow2 overlay in a temporary NIMBUS_HOME, never on the image itself, and is killed at the end
/// whatever happened.
@Suite(
    "Machines boot the guest image",
    .serialized,
    .requires(.guest, .programs("cloud-localds"))
)
struct MachineBootTests {
    /// Held while this test runs: at most `GuestSlot.count` guest-booting tests at once.
    let guestSlot: GuestSlot

    init() async throws { guestSlot = try await GuestSlot(expectedSeconds: 280) }

    /// Generous: under TCG on a busy host a boot with cloud-init takes minutes. Not an assertion on speed,
    /// only a bound so a hung guest fails the test instead of hanging CI.
    static let bootDeadline: Duration = .seconds(900)

    struct Guest {
        let home: TemporaryDirectory
        let directory: MachineDirectory
        let driver: QEMUDriver
        let image: URL

        var overlay: URL { directory.url.appending(path: "disk.qcow2") }
        var seed: URL { directory.url.appending(path: "seed.iso") }
    }

    static func withGuest(_ body: (Guest) async throws -> Void) async throws {
        let image = try #require(Prerequisites.guestImageDirectory)
        let home = try TemporaryDirectory("nimbus-boot")
        defer { home.remove() }
        let directory = MachineDirectory(home.paths.instances.appending(path: "guest"))
        try FileManager.default.createDirectory(at: directory.url, withIntermediateDirectories: true)
        let guest = Guest(home: home, directory: directory, driver: QEMUDriver(paths: home.paths), image: image)
        try await ProgramRunner.run(
            "qemu-img",
            [
                "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b",
                image.appending(path: "debian-12-genericcloud-amd64.qcow2").path, guest.overlay.path, "4G",
            ])
        do {
            try await body(guest)
        } catch {
            let log = (try? String(contentsOf: directory.serialLog, encoding: .utf8)) ?? ""
            print("serial log tail:\n\(log.suffix(3000))")
            try? await guest.driver.kill(directory)
            throw error
        }
        try? await guest.driver.kill(directory)
    }

    /// A NoCloud seed whose runcmd runs `script` and then prints NIMBUS-READY on the serial console.
    static func makeSeed(_ guest: Guest, script: String = "true") async throws {
        let userData = guest.directory.url.appending(path: "user-data")
        let metaData = guest.directory.url.appending(path: "meta-data")
        try """
        #cloud-config
        runcmd:
          - [sh, -c, "\(script); echo NIMBUS-READY > /dev/ttyS0"]
        """.write(to: userData, atomically: true, encoding: .utf8)
        try "instance-id: nimbus-test-\(UUID().uuidString)\nlocal-hostname: guest\n".write(
            to: metaData, atomically: true, encoding: .utf8)
        try await ProgramRunner.run("cloud-localds", [guest.seed.path, userData.path, metaData.path])
    }

    /// Waits until the serial log holds `marker`; fails if QEMU ends first or the deadline passes.
    static func waitForConsole(_ guest: Guest, _ marker: String) async throws -> String {
        let deadline = ContinuousClock.now + bootDeadline
        while ContinuousClock.now < deadline {
            let log = (try? String(contentsOf: guest.directory.serialLog, encoding: .utf8)) ?? ""
            if log.contains(marker) { return log }
            let status = await guest.driver.status(of: guest.directory)
            try #require(status.state != .stopped, "QEMU ended before the guest printed \(marker)")
            try await Task.sleep(for: .seconds(2))
        }
        Issue.record("the guest did not print \(marker) before the deadline")
        throw CancellationError()
    }

    /// Attaches to the serial console socket, presses Enter, and reads until `text` (a getty prompt) shows.
    static func consoleAnswers(_ guest: Guest, containing text: String) throws -> Bool {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        try #require(fd >= 0)
        defer { close(fd) }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let path = Array(guest.directory.consoleSocket.path.utf8)
        try #require(path.count < MemoryLayout.size(ofValue: address.sun_path))
        withUnsafeMutableBytes(of: &address.sun_path) { buffer in
            buffer.copyBytes(from: path)
            buffer[path.count] = 0
        }
        let connected = withUnsafePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) == 0
            }
        }
        try #require(connected, "could not connect to \(guest.directory.consoleSocket.path)")
        // getty answers within seconds on an idle host; a loaded 2-core TCG host has taken over a minute.
        var timeout = timeval(tv_sec: 300, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        _ = "\r\n".withCString { write(fd, $0, 2) }
        var received = ""
        var buffer = [UInt8](repeating: 0, count: 4096)
        while !received.contains(text) {
            let count = read(fd, &buffer, buffer.count)
            guard count > 0 else { break }
            received += String(decoding: buffer[0..<count], as: UTF8.self)
        }
        return received.contains(text)
    }

    /// Presses the power button and expects the guest to shut itself down.
    static func stopGracefully(_ guest: Guest) async throws {
        let outcome = try await guest.driver.stop(guest.directory, timeout: .seconds(60)) { step in
            print("stop: \(step)")
        }
        #expect(outcome.endedBy == .guestShutdown)
        #expect(outcome.shutdownReason == "guest-shutdown")
        #expect(await guest.driver.status(of: guest.directory).state == .stopped)
        // The overlay is free: qemu-img can take its write lock.
        try await ProgramRunner.run("qemu-img", ["info", guest.overlay.path])
    }

    @Test(
        "UEFI boot with --accel auto (TCG chosen by itself), NoCloud seed, running, then a graceful stop by the guest")
    func uefiBoot() async throws {
        try await Self.withGuest { guest in
            // A virtiofs share (Debian's cloud kernel, which this disk boots, has no 9p), a raw scratch disk on
            // virtio-scsi and VNC ride along; the guest reports what it sees and writes into the share.
            let shared = guest.directory.url.appending(path: "shared")
            try FileManager.default.createDirectory(at: shared, withIntermediateDirectories: true)
            try "nimbus-virtiofs-ok".write(to: shared.appending(path: "hello.txt"), atomically: true, encoding: .utf8)
            let scratch = guest.directory.url.appending(path: "scratch.raw")
            try await ProgramRunner.run("qemu-img", ["create", "-q", "-f", "raw", scratch.path, "64M"])
            try await Self.makeSeed(
                guest,
                script: "mkdir -p /mnt/host && mount -t virtiofs hostshare /mnt/host"
                    + " && echo NIMBUS-SHARE $(cat /mnt/host/hello.txt) > /dev/ttyS0"
                    + " && echo written-by-the-guest > /mnt/host/from-guest.txt;"
                    + " echo NIMBUS-DISKS $(lsblk -dn -o NAME,SIZE | tr -s ' ' | tr '\\n' ' ') > /dev/ttyS0")
            var config = MachineConfig(name: "guest")
            config.memory = .gibibytes(1)
            config.disks = [
                .init(path: guest.overlay.path),
                .init(path: scratch.path, format: .raw, interface: .virtioSCSI),
            ]
            config.seed = .noCloud(iso: guest.seed.path)
            config.shares = [.init(hostPath: shared.path, tag: "hostshare")]
            config.vnc = true
            config.accelerator = .auto
            let machine = try await guest.driver.start(config, in: guest.directory)
            var info = stat()
            #expect(stat(guest.directory.vncSocket.path, &info) == 0 && info.st_mode & 0o777 == 0o600)
            if FileManager.default.fileExists(atPath: "/sys/module/kvm_pvm") {
                #expect(machine.accelerator.accelerator == .tcg)
                #expect(machine.accelerator.reason.contains("kvm_pvm"))
            }
            print(machine.accelerator.notice ?? "accelerator: \(machine.accelerator.reason)")
            let log = try await Self.waitForConsole(guest, "NIMBUS-READY")
            #expect(log.contains("NIMBUS-SHARE nimbus-virtiofs-ok"))
            #expect(
                (try? String(contentsOf: shared.appending(path: "from-guest.txt"), encoding: .utf8))
                    == "written-by-the-guest\n")
            // The share's virtiofsd belongs to the machine, and ends with it.
            #expect(Virtiofsd.livePIDs(in: guest.directory).count == 1)
            #expect(try Self.consoleAnswers(guest, containing: "login:"))
            let disks = log.split(whereSeparator: \.isNewline).first { $0.hasPrefix("NIMBUS-DISKS") }
            #expect(disks?.contains("vda 4G") == true, "\(disks ?? "")")
            #expect(disks?.contains("sda 64M") == true, "\(disks ?? "")")
            #expect(await guest.driver.status(of: guest.directory).state == .running)
            try await Self.stopGracefully(guest)
            #expect(Virtiofsd.livePIDs(in: guest.directory).isEmpty)
        }
    }

    @Test(
        "direct kernel boot of the generic kernel with BIOS (SeaBIOS); a read-only 9p share; the Ignition config through fw_cfg"
    )
    func directKernelBIOSIgnition() async throws {
        try await Self.withGuest { guest in
            let ignition = guest.directory.url.appending(path: "config.ign")
            let config =
                #"{"ignition":{"version":"3.4.0"},"storage":{"files":[{"path":"/etc/nimbus","contents":{"source":"data:,fw_cfg%20works"}}]}}"#
            try config.write(to: ignition, atomically: true, encoding: .utf8)
            let raw = "/sys/firmware/qemu_fw_cfg/by_name/opt/com.coreos/config/raw"
            // 9p, which only the generic kernel has: read-only, so the guest's write is refused.
            let shared = guest.directory.url.appending(path: "shared")
            try FileManager.default.createDirectory(at: shared, withIntermediateDirectories: true)
            try "nimbus-9p-ok".write(to: shared.appending(path: "hello.txt"), atomically: true, encoding: .utf8)
            try await Self.makeSeed(
                guest,
                script: "modprobe qemu_fw_cfg; echo NIMBUS-IGNITION $(base64 -w0 \(raw)) END > /dev/ttyS0;"
                    + " mkdir -p /mnt/host && mount -t 9p -o trans=virtio,version=9p2000.L hostshare /mnt/host"
                    + " && echo NIMBUS-SHARE $(cat /mnt/host/hello.txt) > /dev/ttyS0;"
                    + " touch /mnt/host/nope || echo NIMBUS-READONLY > /dev/ttyS0")
            var machine = MachineConfig(name: "guest")
            machine.memory = .gibibytes(1)
            machine.firmware = .bios
            machine.kernel = .init(
                kernel: guest.image.appending(path: "vmlinuz-generic").path,
                initrd: guest.image.appending(path: "initrd-generic.img").path,
                commandLine: "root=LABEL=nimbus-root ro console=ttyS0,115200")
            machine.shares = [.init(hostPath: shared.path, tag: "hostshare", readOnly: true, transport: .ninep)]
            // The NoCloud ISO rides along as a read-only disk (cloud-init finds it by its cidata label), so the
            // seed slot carries the Ignition config.
            machine.disks = [
                .init(path: guest.overlay.path), .init(path: guest.seed.path, format: .raw, readOnly: true),
            ]
            machine.seed = .ignition(config: ignition.path)
            _ = try await guest.driver.start(machine, in: guest.directory)
            let log = try await Self.waitForConsole(guest, "NIMBUS-READY")
            let line = try #require(log.split(whereSeparator: \.isNewline).first { $0.hasPrefix("NIMBUS-IGNITION ") })
            let encoded = line.split(separator: " ").dropFirst().first.map(String.init) ?? ""
            #expect(Data(base64Encoded: encoded) == Data(config.utf8))
            #expect(log.contains("NIMBUS-SHARE nimbus-9p-ok"))
            #expect(log.contains("NIMBUS-READONLY"))
            #expect(log.contains("Linux version 6.") && !log.contains("-cloud-amd64"))
            #expect(await guest.driver.status(of: guest.directory).state == .running)
            try await Self.stopGracefully(guest)
        }
    }
}
