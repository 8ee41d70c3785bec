import Foundation
import NimbusCore
import NimbusMachines
import NimbusQEMU
import NimbusSeed
import NimbusTestSupport
import Testing

/// Boots the real guest image (NIMBUS_TEST_IMAGE_DIR) under QEMU through NimbusMachines. Each boot works
/// on a qcow2 overlay in a temporary NIMBUS_HOME, never on the image itself, and is killed at the end
/// whatever happened.
@Suite("Machines boot the guest image", .serialized, .requires(.guest, .programs("mkfs.ext4")))
struct MachineBootTests {
    /// Held while this test runs: at most `GuestSlot.count` guest-booting tests at once.
    let guestSlot: GuestSlot

    init() async throws { guestSlot = try await GuestSlot(expectedSeconds: 300) }

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
        // The system's QEMU, whatever NIMBUS_QEMU says: the suite's other QEMU guests run on scripts/build-qemu's.
        let driver = QEMUDriver(executable: QEMUDriver.systemProgram, hostFactsCache: home.paths.hostFacts)
        let guest = Guest(home: home, directory: directory, driver: driver, image: image)
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

    /// A NoCloud seed written by NimbusSeed (as `nimbus launch` writes it, here without Nimbus's instance
    /// layer): a personality (hostname, domain, locale, timezone, users, a file), a host key, the NIC matched by
    /// its MAC, the scratch disk mounted by its label, and a runcmd
    /// that runs `script` and then prints NIMBUS-READY on the serial console.
    static func makeSeed(_ guest: Guest, hostKey: SSHKeyPair, mac: String, script: String) throws {
        var config = InstanceConfig()
        config.hostname = "seedvm"
        config.domain = "nimbus.test"
        config.locale = "en_US.UTF-8"
        config.timezone = "Europe/Paris"
        config.defaultUser = InstanceConfig.User(
            name: "nimbus", sshAuthorizedKeys: [SSHKeyPair(comment: "nimbus@test").publicKeyLine])
        config.hostKeys = InstanceConfig.HostKeys(ed25519: hostKey)
        config.users = [InstanceConfig.User(name: "alice", groups: ["adm"])]
        config.mounts = [["LABEL=nimbus-data", "/srv/data", "ext4", "defaults,nofail", "0", "2"]]
        config.writeFiles = [
            InstanceConfig.WriteFile(path: "/etc/nimbus/hello.txt", content: "hello from nimbus\n", permissions: "0640")
        ]
        config.runcmd = [.shell("\(script); echo NIMBUS-READY > /dev/ttyS0")]
        config.network = InstanceConfig.Network(interfaces: [.init(macAddress: mac)])
        try NoCloudSeed(config: config, name: "seedvm").writeISO(to: guest.seed, timestamp: Date())
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
        "UEFI direct kernel boot of the generic kernel with --accel auto (TCG chosen by itself); a NimbusSeed NoCloud seed as a disk applied; virtiofs and read-only 9p shares; a scratch disk on virtio-scsi; the Ignition config through fw_cfg; VNC; a getty on the console; a graceful stop by the guest"
    )
    func boot() async throws {
        try await Self.withGuest { guest in
            // Two shares: virtiofs, written both ways, and 9p (which only the generic kernel has), read-only so
            // the guest's write is refused.
            let shared = guest.directory.url.appending(path: "shared")
            try FileManager.default.createDirectory(at: shared, withIntermediateDirectories: true)
            try "nimbus-virtiofs-ok".write(to: shared.appending(path: "hello.txt"), atomically: true, encoding: .utf8)
            let readOnly = guest.directory.url.appending(path: "read-only")
            try FileManager.default.createDirectory(at: readOnly, withIntermediateDirectories: true)
            try "nimbus-9p-ok".write(to: readOnly.appending(path: "hello.txt"), atomically: true, encoding: .utf8)
            // A scratch disk on virtio-scsi, with a filesystem the seed's `mounts` finds by its label.
            let scratch = guest.directory.url.appending(path: "scratch.raw")
            try await ProgramRunner.run("qemu-img", ["create", "-q", "-f", "raw", scratch.path, "64M"])
            try await ProgramRunner.run("mkfs.ext4", ["-q", "-L", "nimbus-data", scratch.path])
            let ignition = guest.directory.url.appending(path: "config.ign")
            let ignitionConfig =
                #"{"ignition":{"version":"3.4.0"},"storage":{"files":[{"path":"/etc/nimbus","contents":{"source":"data:,fw_cfg%20works"}}]}}"#
            try ignitionConfig.write(to: ignition, atomically: true, encoding: .utf8)
            let raw = "/sys/firmware/qemu_fw_cfg/by_name/opt/com.coreos/config/raw"
            let hostKey = SSHKeyPair(comment: "seed-guest-host")
            let mac = "52:54:00:5e:ed:01"
            try Self.makeSeed(
                guest, hostKey: hostKey, mac: mac,
                // The guest reports into the virtiofs share, where no console message can land mid-line;
                // cloud-init's own verdict comes once it has finished (after this runcmd), from a job it leaves.
                script:
                    "(cloud-init status --wait >/dev/null; cloud-init status > /mnt/host/s.new && mv /mnt/host/s.new /mnt/host/status) &"
                    + " mkdir -p /mnt/host /mnt/ro && mount -t virtiofs hostshare /mnt/host"
                    + " && echo written-by-the-guest > /mnt/host/from-guest.txt; r=/mnt/host/report;"
                    + " echo NIMBUS-SHARE $(cat /mnt/host/hello.txt) >> $r;"
                    + " mount -t 9p -o trans=virtio,version=9p2000.L roshare /mnt/ro"
                    + " && echo NIMBUS-9P $(cat /mnt/ro/hello.txt) >> $r;"
                    + " touch /mnt/ro/nope || echo NIMBUS-READONLY >> $r;"
                    + " modprobe qemu_fw_cfg; echo NIMBUS-IGNITION $(base64 -w0 \(raw)) END >> $r;"
                    + " echo NIMBUS-DISKS $(lsblk -dn -o NAME,SIZE | tr -s ' ' | tr '\\n' ' ') >> $r;"
                    + " echo NIMBUS-SEED $(hostname) $(hostname -f) $(grep -c '127.0.1.1 seedvm.nimbus.test seedvm'"
                    + " /etc/hosts) $(grep LANG= /etc/default/locale) $(readlink /etc/localtime)"
                    + " $(stat -c '%a-%U' /etc/nimbus/hello.txt) $(cat /etc/nimbus/hello.txt | tr ' ' -)"
                    + " $(id -nG alice | tr ' ' ,) $(runuser -u alice -- sudo -n id -u) $(findmnt -n -o TARGET,FSTYPE /srv/data | tr -s ' ' -)"
                    + " $(cut -d' ' -f2 /etc/ssh/ssh_host_ed25519_key.pub) $(ip -4 -o addr show | grep -c 10.0.2.15)"
                    + " END >> $r")
            var config = MachineConfig(name: "guest")
            config.memory = .gibibytes(1)
            config.kernel = .init(
                kernel: guest.image.appending(path: "vmlinuz-generic").path,
                initrd: guest.image.appending(path: "initrd-generic.img").path,
                commandLine: "root=LABEL=nimbus-root ro console=ttyS0,115200")
            // The NoCloud ISO rides along as a read-only disk (cloud-init finds it by its cidata label), so the
            // seed slot carries the Ignition config.
            config.disks = [
                .init(path: guest.overlay.path),
                .init(path: scratch.path, format: .raw, interface: .virtioSCSI),
                .init(path: guest.seed.path, format: .raw, readOnly: true),
            ]
            config.seed = .ignition(config: ignition.path)
            config.network.macAddress = mac
            config.shares = [
                .init(hostPath: shared.path, tag: "hostshare"),
                .init(hostPath: readOnly.path, tag: "roshare", readOnly: true, transport: .ninep),
            ]
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
            #expect(log.contains("Linux version 6.") && !log.contains("-cloud-amd64"))
            let report = (try? String(contentsOf: shared.appending(path: "report"), encoding: .utf8)) ?? ""
            func line(_ marker: String) -> String {
                report.split(whereSeparator: \.isNewline).first { $0.hasPrefix(marker + " ") }.map(String.init) ?? ""
            }
            #expect(line("NIMBUS-SHARE") == "NIMBUS-SHARE nimbus-virtiofs-ok", "\(report)")
            #expect(
                (try? String(contentsOf: shared.appending(path: "from-guest.txt"), encoding: .utf8))
                    == "written-by-the-guest\n")
            #expect(line("NIMBUS-9P") == "NIMBUS-9P nimbus-9p-ok")
            #expect(report.contains("NIMBUS-READONLY"))
            let encoded = line("NIMBUS-IGNITION").split(separator: " ").dropFirst().first.map(String.init) ?? ""
            #expect(Data(base64Encoded: encoded) == Data(ignitionConfig.utf8))
            let disks = line("NIMBUS-DISKS")
            #expect(disks.contains("vda 4G") && disks.contains("sda 64M"), "\(disks)")
            // The seed applied: hostname, FQDN and /etc/hosts, locale, timezone, write_files with its mode,
            // the user with its group and sudo, the mount, the pinned host key and the MAC-matched NIC's address;
            // and cloud-init says it finished without an error.
            let hostKeyBlob = hostKey.publicKeyLine.split(separator: " ")[1]
            #expect(
                line("NIMBUS-SEED")
                    == "NIMBUS-SEED seedvm seedvm.nimbus.test 1 LANG=en_US.UTF-8 /usr/share/zoneinfo/Europe/Paris"
                    + " 640-root hello-from-nimbus alice,adm 0 /srv/data-ext4 \(hostKeyBlob) 1 END")
            let status = shared.appending(path: "status")
            let deadline = ContinuousClock.now + Self.bootDeadline
            while !FileManager.default.fileExists(atPath: status.path), ContinuousClock.now < deadline {
                try await Task.sleep(for: .seconds(2))
            }
            #expect(
                (try? String(contentsOf: status, encoding: .utf8)) == "status: done\n",
                "cloud-init's status, from the guest")
            // The share's virtiofsd belongs to the machine, and ends with it.
            #expect(Virtiofsd.livePIDs(in: guest.directory).count == 1)
            #expect(try Self.consoleAnswers(guest, containing: "login:"))
            #expect(await guest.driver.status(of: guest.directory).state == .running)
            try await Self.stopGracefully(guest)
            #expect(Virtiofsd.livePIDs(in: guest.directory).isEmpty)
        }
    }
}
