import Foundation
import NimbusCore
import NimbusTestSupport
import Testing

@testable import NimbusInstances

@Suite("Readiness reads the serial log")
struct ReadinessTests {
    /// A Readiness on `log`; its SSH access points at a closed port and is never used by these waits.
    func readiness(_ log: URL, in dir: TemporaryDirectory) -> Readiness {
        let ssh = SSHAccess(
            identity: dir.url.appending(path: "id"), knownHosts: dir.url.appending(path: "known_hosts"),
            hostAlias: "test", user: "nimbus", port: 9, controlDirectory: dir.url)
        return Readiness(serialLog: log, ssh: ssh) { _, _ in }
    }

    @Test("a guest whose C library refuses the CPU model fails the wait at once, naming the level and --cpu-model")
    func missingISALevel() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let log = dir.url.appending(path: "serial.log")
        // What a RHEL 10 guest prints on an x86-64-v2 CPU: glibc's loader stops init, then the kernel panics.
        try """
        [    0.000000] Linux version 6.12.0-55.9.1.el10_0.x86_64 (mockbuild@example) #1 SMP PREEMPT_DYNAMIC
        [    2.514913] Run /init as init process
        Fatal glibc error: CPU does not support x86-64-v3
        [    2.520442] Kernel panic - not syncing: Attempted to kill init! exitcode=0x00007f00

        """.write(to: log, atomically: true, encoding: .utf8)
        // Were the line not recognised, the wait would end at its deadline with a timeout instead.
        await #expect {
            try await readiness(log, in: dir).until(
                .sshReachable, deadline: .now + .seconds(5), isAlive: { true }, { false })
        } throws: { error in
            let error = error as? NimbusError
            return error?.code == .unsupported && error?.message.contains("need x86-64-v3") == true
                && error?.message.contains("--cpu-model max") == true
        }
    }

    @Test(
        "a kernel that fails its early timer check (a busy TCG host) is reset and waited for again, twice at most; then, and for any other panic, the wait fails"
    )
    func timerCheckPanic() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let log = dir.url.appending(path: "serial.log")
        // Debian 12's cloud kernel under TCG in CI (session 15), the guest beside a busy host.
        let panic = """
            [    0.000000] Linux version 6.1.0-57-cloud-amd64 (debian-kernel@lists.debian.org) #1 SMP PREEMPT_DYNAMIC
            [    0.004000] ..MP-BIOS bug: 8254 timer not connected to IO-APIC
            [    0.020000] ...trying to set up timer as ExtINT IRQ...
            [    0.032000] Kernel panic - not syncing: IO-APIC + timer doesn't work!  Boot with apic=debug and send a report.  Then try booting with the 'noapic' option.

            """
        try panic.write(to: log, atomically: false, encoding: .utf8)
        let resets = Counter()
        var waiting = readiness(log, in: dir)
        // Each reset boots into the same panic, as a host that stays busy makes it: two resets, then the error.
        waiting.resetMachine = { () async throws(NimbusError) in
            await resets.increment()
            let handle = try? FileHandle(forWritingTo: log)
            _ = try? handle?.seekToEnd()
            try? handle?.write(contentsOf: Data(panic.utf8))
            try? handle?.close()
        }
        await #expect {
            try await waiting.until(.sshReachable, deadline: .now + .seconds(30), isAlive: { true }, { false })
        } throws: { error in
            let error = error as? NimbusError
            return error?.message.contains("the guest's kernel panicked") == true
        }
        #expect(await resets.value == 2)

        // The boot after a reset passes: the wait goes on to SSH (here: the condition holds once reset).
        try panic.write(to: log, atomically: false, encoding: .utf8)
        let passed = Counter()
        waiting.resetMachine = { () async throws(NimbusError) in
            await passed.increment()
            let handle = try? FileHandle(forWritingTo: log)
            _ = try? handle?.seekToEnd()
            try? handle?.write(contentsOf: Data("[    0.000000] Linux version 6.1.0-57-cloud-amd64\n".utf8))
            try? handle?.close()
        }
        try await waiting.until(
            .sshReachable, deadline: .now + .seconds(30), isAlive: { true }, { await passed.value == 1 })

        // Another panic is no timer check: no reset.
        try "[    2.5] Kernel panic - not syncing: Attempted to kill init! exitcode=0x00007f00\n".write(
            to: log, atomically: false, encoding: .utf8)
        let none = Counter()
        waiting.resetMachine = { () async throws(NimbusError) in await none.increment() }
        await #expect(throws: NimbusError.self) {
            try await waiting.until(.sshReachable, deadline: .now + .seconds(30), isAlive: { true }, { false })
        }
        #expect(await none.value == 0)
    }

    actor Counter {
        var value = 0
        func increment() { value += 1 }
    }

    @Test(
        "an SSH server that systemd fails to start ends the wait for SSH once it has not answered for the grace, naming recover --reseed"
    )
    func sshServerFails() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let log = dir.url.appending(path: "serial.log")
        // systemd 252 (Debian 12) on the console when sshd finds its host key files empty, byte for byte as the
        // test guest printed it: the unit's name shortened, and the escape byte of its colour reset lost.
        let lines = [
            "[    0.000000] Linux version 6.1.0-57-cloud-amd64 (debian-kernel@lists.debian.org) #1 SMP PREEMPT_DYNAMIC",
            "         Starting \u{1b}[0;1;39mssh.service\u{1b}[0m - OpenBSD Secure Shell server...",
            "[\u{1b}[0;1;31mFAILED\u{1b}[0m] Failed to start \u{1b}[0;1;39mssh.servic…[0m - OpenBSD Secure Shell server.",
            "See 'systemctl status ssh.service' for details.",
        ]
        try (lines.joined(separator: "\r\r\n") + "\r\r\n").write(to: log, atomically: true, encoding: .utf8)
        let watch = SerialWatch(log)
        watch.poll()
        #expect(watch.sshServerFailure?.line == "[FAILED] Failed to start ssh.servic… - OpenBSD Secure Shell server.")
        try "[FAILED] Failed to start sshd.service - OpenSSH server daemon.\r\n".write(
            to: log, atomically: true, encoding: .utf8)
        let fedora = SerialWatch(log)
        fedora.poll()
        #expect(fedora.sshServerFailure != nil)

        var waiting = readiness(log, in: dir)
        waiting.sshServerGrace = .milliseconds(300)
        // Were the line not recognised, the wait would end at its deadline with a timeout instead.
        await #expect {
            try await waiting.until(.sshReachable, deadline: .now + .seconds(300), isAlive: { true }, { false })
        } throws: { error in
            let error = error as? NimbusError
            return error?.code == .guestSetup
                && error?.message.contains("the guest's SSH server does not start") == true
                && error?.message.contains("`nimbus recover --reseed`") == true
        }
        // Other phases are not SSH's to fail, and a line that is not systemd's about sshd is no failure.
        await #expect {
            try await waiting.until(.kernel, deadline: .now + .seconds(1), isAlive: { true }, { false })
        } throws: { error in
            (error as? NimbusError)?.code == .timeout
        }
        try "Failed to start nginx.service - A high performance web server.\r\n".write(
            to: log, atomically: true, encoding: .utf8)
        let other = SerialWatch(log)
        other.poll()
        #expect(other.sshServerFailure == nil)
    }

    @Test(
        "a console log that stops before the kernel (virtlogd restarted under libvirt's QEMU) does not hide a guest whose SSH answers"
    )
    func deadConsoleLog() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let log = dir.url.appending(path: "serial.log")
        try "SeaBIOS (version 1.16.2-debian-1.16.2-1)\r\n".write(to: log, atomically: true, encoding: .utf8)
        // An sshd on a loopback port: it sends its banner to whoever connects, as the forwarded port does.
        let (listener, port) = try #require(Loopback.bindSocket(port: 0))
        defer { close(listener) }
        #expect(listen(listener, 8) == 0)
        let server = Thread {
            while true {
                let client = accept(listener, nil, nil)
                guard client >= 0 else { return }
                _ = "SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n".withCString {
                    send(client, $0, strlen($0), Int32(MSG_NOSIGNAL))
                }
                close(client)
            }
        }
        server.start()
        let ssh = SSHAccess(
            identity: dir.url.appending(path: "id"), knownHosts: dir.url.appending(path: "known_hosts"),
            hostAlias: "test", user: "nimbus", port: port, controlDirectory: dir.url)
        var waiting = Readiness(serialLog: log, ssh: ssh) { _, _ in }
        waiting.consoleGrace = .milliseconds(500)
        let console = SerialWatch(log)
        var probedAt = waiting.start
        // Were SSH's banner not taken for the kernel, the wait would end at its deadline with a timeout.
        let alive: @Sendable () async -> Bool = { true }
        try await waiting.until(.kernel, deadline: .now + .seconds(300), isAlive: alive, console: console) {
            await waiting.kernelBooted(console, probedAt: &probedAt)
        }
        #expect(!console.sawKernel)
    }

    @Test("the level is read from glibc's line only")
    func levelParsing() {
        #expect(Readiness.missingISALevel(in: "Fatal glibc error: CPU does not support x86-64-v2\n") == "x86-64-v2")
        #expect(Readiness.missingISALevel(in: "CPU does not support x86-64-v") == nil)
        #expect(Readiness.missingISALevel(in: "[    0.1] x86/cpu: x86-64-v3 is fine") == nil)
    }
}

@Suite("Readiness tells a cloud-init that never starts")
struct CloudInitNeverStartedTests {
    /// What Debian's cloud kernel printed on this host's QEMU, with the console's CRLF line ends: the boot
    /// disk on virtio-blk and, when the guest could see it, the seed CD-ROM on virtio-scsi; `sshFailed`, systemd's
    /// line about sshd, which a Debian guest without cloud-init prints (no host keys were written).
    static func console(seedSeen: Bool, cloudInit: Bool, sshFailed: Bool = false) -> String {
        var lines = [
            "SeaBIOS (version 1.16.2-debian-1.16.2-1)",
            "[    0.000000] Linux version 6.1.0-57-cloud-amd64 (debian-kernel@lists.debian.org) #1 SMP PREEMPT_DYNAMIC",
            "[    6.524025] virtio_blk virtio0: [vda] 8388608 512-byte logical blocks (4.29 GB/4.00 GiB)",
            "[    6.530001]  vda: vda1 vda2",
        ]
        if seedSeen {
            lines.append("[    6.918554] sr 0:0:0:0: [sr0] scsi3-mmc drive: 16x/50x cd/rw xa/form2 cdda tray")
        }
        if cloudInit {
            lines.append(
                "[   39.638843] cloud-init[261]: Cloud-init v. 22.4.2 running 'init-local' at Thu, 03 Dec 2026 07:30:05 +0000."
            )
        }
        if sshFailed {
            lines.append(
                "[\u{1b}[0;1;31mFAILED\u{1b}[0m] Failed to start \u{1b}[0;1;39mssh.servic…[0m - OpenBSD Secure Shell server."
            )
        }
        lines += ["", "Debian GNU/Linux 12 localhost ttyS0", "", "localhost login: "]
        return lines.joined(separator: "\r\n")
    }

    func readiness(_ log: URL, in dir: TemporaryDirectory, seed: CloudInitSeed?) -> Readiness {
        let ssh = SSHAccess(
            identity: dir.url.appending(path: "id"), knownHosts: dir.url.appending(path: "known_hosts"),
            hostAlias: "test", user: "nimbus", port: 9, controlDirectory: dir.url)
        var readiness = Readiness(serialLog: log, ssh: ssh, cloudInit: seed) { _, _ in }
        readiness.cloudInitGrace = .milliseconds(300)
        // Shorter than cloudInitGrace: the SSH server's failure, which follows from cloud-init's absence, is
        // seen first and must not hide its cause.
        readiness.sshServerGrace = .milliseconds(100)
        return readiness
    }

    func wait(_ console: String, seed: CloudInitSeed?) async throws -> NimbusError? {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let log = dir.url.appending(path: "serial.log")
        try console.write(to: log, atomically: true, encoding: .utf8)
        do {
            try await readiness(log, in: dir, seed: seed).until(
                .sshReachable, deadline: .now + .seconds(3), isAlive: { true }, { false })
            return nil
        } catch {
            return error
        }
    }

    @Test("the console's lines are read across CRLF ends: the kernel, the disks it saw, cloud-init, the login prompt")
    func watch() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let log = dir.url.appending(path: "serial.log")
        try Self.console(seedSeen: true, cloudInit: false).write(to: log, atomically: true, encoding: .utf8)
        let watch = SerialWatch(log)
        watch.poll()
        #expect(watch.sawKernel && !watch.sawCloudInit)
        #expect(watch.blockDevices == ["vda (virtio disk)", "sr0 (CD-ROM)"])
        #expect(watch.loginPromptAt != nil)
        // Appended output is read from where the last poll stopped.
        let handle = try FileHandle(forWritingTo: log)
        try handle.seekToEnd()
        try handle.write(
            contentsOf: Data("\r\n[   40.1] cloud-init[261]: Cloud-init v. 22.4.2 running 'init'\r\n".utf8))
        try handle.close()
        watch.poll()
        #expect(watch.sawCloudInit)
        #expect(SerialWatch.isLoginPrompt("web login: [   79.910276] cloud-init[473]: Cloud-init v. 22.4.2"))
        #expect(!SerialWatch.isLoginPrompt("[    1.0] systemd[1]: Starting Login Service"))
        #expect(!SerialWatch.isLoginPrompt("Last login: Thu Dec  3"))
    }

    @Test("Ignition's end and a failed stage are read from systemd's coloured, shortened status lines")
    func ignitionConsole() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let log = dir.url.appending(path: "serial.log")
        // As the CoreOS-like guest's console shows them (systemd 252 in a dracut initramfs).
        let success = [
            "         Starting \u{1b}[0;1;39mignition-fetch-of…\u{1b}[0m - Ignition (fetch-offline)...",
            "[\u{1b}[0;32m  OK  \u{1b}[0m] Finished \u{1b}[0;1;39mignition-files.service\u{1b}[0m - Ignition (files).",
            "[\u{1b}[0;32m  OK  \u{1b}[0m] Reached target \u{1b}[0;1;39mignition-co…te.target\u{1b}[0m - Ignition Complete.",
        ]
        try (success.joined(separator: "\r\n") + "\r\n").write(to: log, atomically: true, encoding: .utf8)
        let watch = SerialWatch(log)
        watch.poll()
        #expect(watch.ignitionFinished)
        #expect(watch.ignitionFailure() == nil)

        let failure = [
            "[   12.3] ignition[412]: failed to fetch config: unsupported config version",
            "[   12.4] ignition[412]: error: CRITICAL : Ignition failed: unsupported config version",
            "[\u{1b}[0;1;31mFAILED\u{1b}[0m] Failed to start \u{1b}[0;1;39mignition-fetch-of…ce\u{1b}[0m - Ignition (fetch-offline).",
            "Entering emergency mode. Exit the shell to continue.",
        ]
        try (failure.joined(separator: "\r\n") + "\r\n").write(to: log, atomically: true, encoding: .utf8)
        let failed = SerialWatch(log)
        failed.poll()
        #expect(!failed.ignitionFinished)
        #expect(failed.ignitionFailure() == "fetch-offline")
        #expect(
            failed.ignitionErrors.contains { $0.contains("CRITICAL : Ignition failed: unsupported config version") })
        #expect(SerialWatch.withoutColours("[\u{1b}[0;32m  OK  \u{1b}[0m] Done") == "[  OK  ] Done")

        // The CoreOS-like image's emergency hook, verbatim: Ignition's journal lines under a header.
        let hook = [
            "[\u{1b}[0;1;31mFAILED\u{1b}[0m] Failed to start \u{1b}[0;1;39mignition-f…ce\u{1b}[0m - Ignition (fetch-offline).",
            "[\u{1b}[0;32m  OK  \u{1b}[0m] Reached target \u{1b}[0;1;39memergency.target\u{1b}[0m - Emergency Mode.",
            "------", "Ignition has failed: ignition-fetch-offline.service",
            "Ignition's errors (journalctl -t ignition):",
            "failed to fetch config: unsupported config version", "Ignition failed: unsupported config version",
            "------",
            "Entering emergency mode. Exit the shell to continue.",
        ]
        try (hook.joined(separator: "\r\n") + "\r\n").write(to: log, atomically: true, encoding: .utf8)
        let hooked = SerialWatch(log)
        hooked.poll()
        #expect(hooked.ignitionFailure() == "fetch-offline")
        #expect(
            hooked.ignitionErrors == [
                "failed to fetch config: unsupported config version", "Ignition failed: unsupported config version",
            ])
    }

    @Test("no CD-ROM seen and no word from cloud-init: the seed was invisible, named with the disks the kernel saw")
    func seedInvisible() async throws {
        let error = try await wait(Self.console(seedSeen: false, cloudInit: false, sshFailed: true), seed: .cdrom)
        #expect(error?.code == .guestSetup)
        #expect(error?.code.exitStatus == 12)
        let message = error?.message ?? ""
        #expect(message.contains("cloud-init never started in the guest"), "\(message)")
        #expect(message.contains("the guest's kernel saw no CD-ROM"), "\(message)")
        #expect(message.contains("virtio_scsi and sr_mod, or launch with --seed-over-http"), "\(message)")
        #expect(message.contains("reported: vda (virtio disk)."), "\(message)")
    }

    @Test("the CD-ROM seen but cloud-init silent: ds-identify or a disabled cloud-init, and where to look")
    func seedSeenCloudInitSilent() async throws {
        let error = try await wait(Self.console(seedSeen: true, cloudInit: false, sshFailed: true), seed: .cdrom)
        #expect(error?.code == .guestSetup)
        #expect(error?.message.contains("the kernel saw the seed CD-ROM") == true, "\(error?.message ?? "")")
        #expect(error?.message.contains("/run/cloud-init/ds-identify.log") == true)
        #expect(error?.message.contains("sr0 (CD-ROM)") == true)
    }

    @Test("cloud-init that spoke, or a guest without cloud-init (Ignition), is waited for as before")
    func notTriggered() async throws {
        let spoke = try await wait(Self.console(seedSeen: true, cloudInit: true), seed: .cdrom)
        #expect(spoke?.code == .timeout)
        let ignition = try await wait(Self.console(seedSeen: false, cloudInit: false), seed: nil)
        #expect(ignition?.code == .timeout)
    }
}
