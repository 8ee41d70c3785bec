import Foundation
import NimbusCore
import NimbusSeed
import NimbusTestSupport
import Testing

/// A Nimbus-made seed ISO in the real guest: the guest kernel reads the Rock Ridge names, cloud-init
/// applies vendor-data and user-data, and the pinned host key is the one sshd presents.
@Suite(
    "Seed in a real guest", .serialized,
    .requires(.guest, .programs("ssh", "mkfs.ext4")))
struct SeedGuestTests {
    /// Held while this test runs: at most `GuestSlot.count` guest-booting tests at once.
    let guestSlot: GuestSlot

    init() async throws { guestSlot = try await GuestSlot(expectedSeconds: 140) }

    @Test("cloud-init applies hostname, fqdn, locale, timezone, sudo user, write_files, runcmd and a mount")
    func seedApplies() async throws {
        let directory = try TemporaryDirectory("seed-guest")
        defer { directory.remove() }
        let folder = directory.url
        let imageDirectory = try #require(Prerequisites.guestImageDirectory)

        let userKey = SSHKeyPair(comment: "nimbus@test")
        try userKey.write(privateKeyTo: folder.appending(path: "id_ed25519"))
        let hostKey = SSHKeyPair(comment: "seed-guest-host")
        let mac = "52:54:00:5e:ed:01"

        var config = InstanceConfig()
        config.hostname = "seedvm"
        config.domain = "nimbus.test"
        config.locale = "en_US.UTF-8"
        config.timezone = "Europe/Paris"
        config.defaultUser = InstanceConfig.User(name: "nimbus", sshAuthorizedKeys: [userKey.publicKeyLine])
        config.hostKeys = InstanceConfig.HostKeys(ed25519: hostKey)
        config.users = [InstanceConfig.User(name: "alice", sshAuthorizedKeys: [userKey.publicKeyLine], groups: ["adm"])]
        config.mounts = [["LABEL=nimbus-data", "/srv/data", "ext4", "defaults,nofail", "0", "2"]]
        config.writeFiles = [
            InstanceConfig.WriteFile(path: "/etc/nimbus/hello.txt", content: "hello from nimbus\n", permissions: "0640")
        ]
        config.runcmd = [.shell("echo ran > /var/tmp/runcmd-done")]
        config.network = InstanceConfig.Network(interfaces: [.init(macAddress: mac)])
        let seed = try NoCloudSeed(config: config, name: "seedvm")
        let iso = folder.appending(path: "seed.iso")
        try seed.writeISO(to: iso, timestamp: Date())

        let overlay = folder.appending(path: "disk.qcow2").path
        try await ProgramRunner.run(
            "qemu-img",
            [
                "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b",
                imageDirectory.appending(path: "debian-12-genericcloud-amd64.qcow2").path, overlay, "4G",
            ])
        let data = folder.appending(path: "data.img").path
        try await ProgramRunner.run("qemu-img", ["create", "-q", "-f", "raw", data, "64M"])
        try await ProgramRunner.run("mkfs.ext4", ["-q", "-L", "nimbus-data", data])
        let vars = folder.appending(path: "vars.fd")
        try FileManager.default.copyItem(at: URL(fileURLWithPath: "/usr/share/OVMF/OVMF_VARS_4M.fd"), to: vars)
        let port = try Self.freePort()

        let qemu = Process()
        qemu.executableURL = URL(fileURLWithPath: try #require(ProgramRunner.find("qemu-system-x86_64")))
        qemu.arguments = [
            "-machine", "q35", "-accel", "tcg", "-m", "1024", "-smp", "1", "-display", "none", "-nodefaults",
            "-drive", "if=pflash,format=raw,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd",
            "-drive", "if=pflash,format=raw,file=\(vars.path)",
            "-drive", "file=\(overlay),if=virtio,format=qcow2",
            // A CD-ROM on virtio-scsi: Debian's cloud kernel has no AHCI, where a plain `media=cdrom` would go.
            "-device", "virtio-scsi-pci,id=scsi0",
            "-drive", "if=none,id=seed,file=\(iso.path),media=cdrom,readonly=on",
            "-device", "scsi-cd,drive=seed,bus=scsi0.0",
            "-drive", "file=\(data),if=virtio,format=raw",
            "-netdev", "user,id=n0,hostfwd=tcp:127.0.0.1:\(port)-:22",
            "-device", "virtio-net-pci,netdev=n0,mac=\(mac)",
            "-serial", "file:\(folder.appending(path: "serial.log").path)",
        ]
        try qemu.run()
        defer {
            // The guest's disk is a throw-away overlay: no clean shutdown needed.
            kill(qemu.processIdentifier, SIGKILL)
            qemu.waitUntilExit()
        }

        // The host key is pinned before boot: strict checking against a known_hosts holding only it.
        let knownHosts = folder.appending(path: "known_hosts")
        try Data("[127.0.0.1]:\(port) \(hostKey.publicKeyLine)\n".utf8).write(to: knownHosts)
        // Foundation's Process here, like QEMU's: swift-subprocess's child monitor and Foundation's must not
        // share one test process's children. `timeout` bounds a banner exchange that slirp leaves hanging
        // while the guest boots.
        func ssh(_ command: String) throws -> (status: Int32, standardOutput: String) {
            let process = Process()
            process.executableURL = URL(fileURLWithPath: "/usr/bin/timeout")
            process.arguments = [
                "60", "ssh", "-p", "\(port)", "-i", folder.appending(path: "id_ed25519").path, "-o", "BatchMode=yes",
                "-o", "StrictHostKeyChecking=yes", "-o", "UserKnownHostsFile=\(knownHosts.path)",
                "-o", "ConnectTimeout=10", "alice@127.0.0.1", command,
            ]
            let output = Pipe()
            process.standardOutput = output
            process.standardError = FileHandle.nullDevice
            process.standardInput = FileHandle.nullDevice
            try process.run()
            let data = output.fileHandleForReading.readDataToEndOfFile()
            process.waitUntilExit()
            return (process.terminationStatus, String(decoding: data, as: UTF8.self))
        }

        // Readiness, not timing: poll until cloud-init reports a final state or QEMU dies (bounded).
        var status = ""
        for _ in 0..<120 where qemu.isRunning {
            let result = try ssh("cloud-init status --wait")
            if result.status == 0 || result.standardOutput.contains("status:") {
                status = result.standardOutput
                break
            }
            try await Task.sleep(for: .seconds(5))
        }
        #expect(status.contains("status: done"), "cloud-init did not finish: \(status)")

        let report = try ssh(
            """
            hostname; hostname -f; grep -c '127.0.1.1 seedvm.nimbus.test seedvm' /etc/hosts; \
            grep LANG= /etc/default/locale; readlink /etc/localtime; sudo -n id -u; \
            stat -c '%a %U' /etc/nimbus/hello.txt; sudo cat /etc/nimbus/hello.txt; cat /var/tmp/runcmd-done; \
            findmnt -n -o TARGET,FSTYPE /srv/data
            """)
        #expect(
            report.standardOutput == """
                seedvm
                seedvm.nimbus.test
                1
                LANG=en_US.UTF-8
                /usr/share/zoneinfo/Europe/Paris
                0
                640 root
                hello from nimbus
                ran
                /srv/data ext4

                """)
    }

    static func freePort() throws -> Int {
        Int(try #require(Loopback.freePort(), "no free port on 127.0.0.1"))
    }
}
