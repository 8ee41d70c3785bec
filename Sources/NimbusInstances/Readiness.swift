import Foundation
import NimbusCore

#if canImport(Glibc)
    import Glibc
#endif

/// The phases a launch or start goes through, reported with their elapsed time on stderr.
public enum BootPhase: String, Sendable, CaseIterable {
    case qemuStarted = "QEMU started"
    case kernel = "kernel booting"
    case ignitionFinished = "Ignition finished"
    case sshReachable = "SSH reachable"
    case cloudInitFinished = "cloud-init finished"
    case ignitionApplied = "Ignition's configuration in place"
    /// Not a phase: the kernel's early timer check failed (a loaded TCG host), and the machine was reset.
    case timerCheckReset = "machine reset: the kernel's timer check failed on a busy host"
}

/// What `cloud-init status --format json` said at the end of the boot.
public struct CloudInitResult: Sendable, Equatable, Decodable {
    /// `done`, `error`, `running`, `disabled`, `not run`.
    public let status: String
    /// cloud-init's own messages for each module that failed.
    public let errors: [String]
    /// cloud-init's explanation of the status (its `detail` key), such as why it is disabled; nil when
    /// it gave none.
    public let detail: String?

    /// A result of `status`, with no failed modules and no detail unless given.
    public init(status: String, errors: [String] = [], detail: String? = nil) {
        self.status = status
        self.errors = errors
        self.detail = detail
    }
}

/// How the guest's cloud-init gets its seed, for telling why it never started.
public enum CloudInitSeed: Sendable {
    /// The NoCloud ISO on a virtio-scsi CD-ROM, labelled `cidata`.
    case cdrom
    /// NoCloud over HTTP, named in the SMBIOS serial number.
    case http
}

/// Waits for a guest to become ready without polling SSH in a loop: the serial log shows the kernel, a
/// TCP probe on the forwarded port shows sshd's banner, and then one SSH call, `cloud-init status --wait`,
/// returns when cloud-init has finished.
///
/// A guest that shows its login prompt and never a word from cloud-init fails the wait within
/// `cloudInitGrace`, naming the likely cause, instead of at the timeout: a seed the guest cannot see means
/// ds-identify finds no datasource and disables cloud-init, and with it the user, keys and SSH host keys.
public struct Readiness: Sendable {
    /// The guest's serial console log, watched for the kernel, the login prompt, and cloud-init's or
    /// Ignition's messages.
    public let serialLog: URL
    /// How to reach the guest: its port is probed for sshd's banner, then one login asks cloud-init.
    public let ssh: SSHAccess
    /// Called as each phase is reached, with the time since `start`.
    public let report: @Sendable (BootPhase, Duration) -> Void
    /// When the launch or start began: the deadline and each phase's time count from it.
    public let start: ContinuousClock.Instant
    /// Where the guest's cloud-init seed is; nil when the guest has no cloud-init to wait for: it is then
    /// configured by Ignition (CoreOS), whose result the console and /etc/.ignition-result.json show.
    public let cloudInit: CloudInitSeed?

    /// How long after the login prompt a cloud-init that has said nothing is taken for one that never runs.
    /// On Debian and Ubuntu, cloud-init prints its banner before the login prompt (its units run before
    /// systemd-user-sessions), so any wait here is a margin only.
    public var cloudInitGrace: Duration = .seconds(20)

    /// How long after the console said the SSH server failed to start a guest whose SSH still does not
    /// answer is taken for one whose SSH server will not start: systemd restarts it within a second or two,
    /// and each restart fails the same way when its host keys are gone.
    public var sshServerGrace: Duration = .seconds(15)

    /// Resets the machine; given, a kernel that panics in its early timer check (`SerialWatch.sawTimerCheckPanic`)
    /// is reset and waited for again, up to `timerCheckResets` times, instead of failing the wait.
    public var resetMachine: (@Sendable () async throws(NimbusError) -> Void)?
    /// How many timer-check panics of one wait are answered with a reset.
    public var timerCheckResets = 2

    /// How long the console may show no kernel before SSH's banner is taken as the sign instead
    /// (`kernelBooted`); a kernel's banner comes within seconds of QEMU's start, under TCG too.
    public var consoleGrace: Duration = .seconds(30)

    /// A wait for the guest behind `ssh`; `start` is now and `cloudInit` nil (an Ignition guest)
    /// unless given.
    public init(
        serialLog: URL, ssh: SSHAccess, start: ContinuousClock.Instant = .now, cloudInit: CloudInitSeed? = nil,
        report: @escaping @Sendable (BootPhase, Duration) -> Void
    ) {
        self.serialLog = serialLog
        self.ssh = ssh
        self.start = start
        self.cloudInit = cloudInit
        self.report = report
    }

    /// Waits through every phase; `timeout` bounds the whole wait. A phase that does not come in time is an
    /// error naming it, with the last lines of the serial log. `isAlive` is asked while waiting, so a QEMU
    /// that dies ends the wait at once.
    public func wait(timeout: Duration, isAlive: @Sendable () async -> Bool) async throws(NimbusError)
        -> CloudInitResult
    {
        let deadline = start + timeout
        let console = SerialWatch(serialLog)
        // A guest on a remote libvirt host writes its serial log there: its first sign here is SSH.
        if ssh.host == "127.0.0.1" {
            var probedAt = start
            try await until(.kernel, deadline: deadline, isAlive: isAlive, console: console) {
                await kernelBooted(console, probedAt: &probedAt)
            }
        }
        try await until(.sshReachable, deadline: deadline, isAlive: isAlive, console: console) {
            await sshBannerAnswersOffThePool()
        }
        guard cloudInit != nil else {
            try await ignitionResult(deadline: deadline, console: console)
            report(.ignitionApplied, .now - start)
            return CloudInitResult(status: "done")
        }
        let output = try await cloudInitStatus(deadline: deadline, console: console)
        if output.status == "disabled" || output.status == "not run" {
            console.poll()
            throw NimbusError(
                .guestSetup,
                "cloud-init did not run in the guest (`cloud-init status`: \(output.status)\(output.detail.map { ", \($0)" } ?? "")): \(likelyCause(console)) The instance is left running: `nimbus shell` does not work without cloud-init, `nimbus console` does"
            )
        }
        report(.cloudInitFinished, .now - start)
        return output
    }

    /// Whether the guest's kernel runs: its banner on the console, or, once `consoleGrace` has passed without
    /// it, sshd's banner (asked every 5 s). A console log can stop being written while the guest boots on:
    /// libvirt writes it through virtlogd, and a virtlogd restarted under a running QEMU leaves QEMU's log
    /// descriptor dead until that QEMU ends.
    func kernelBooted(_ console: SerialWatch, probedAt: inout ContinuousClock.Instant) async -> Bool {
        if console.sawKernel { return true }
        let now = ContinuousClock.now
        guard now - start >= consoleGrace, now - probedAt >= .seconds(5) else { return false }
        probedAt = now
        return await sshBannerAnswersOffThePool()
    }

    /// Polls `condition` (a local file read or a loopback probe, never an SSH login) every 200 ms.
    func until(
        _ phase: BootPhase, deadline: ContinuousClock.Instant, isAlive: @Sendable () async -> Bool,
        console: SerialWatch? = nil, _ condition: () async -> Bool
    ) async throws(NimbusError) {
        let console = console ?? SerialWatch(serialLog)
        while true {
            console.poll()
            if await condition() { break }
            guard await isAlive() else {
                throw NimbusError(
                    .processFailed, "QEMU ended while waiting for \(phase.rawValue)\(serialTail())")
            }
            try checkCloudInitStarted(console)
            try checkIgnition(console)
            if phase == .sshReachable { try checkSSHServer(console) }
            // A guest whose C library refuses the CPU never comes: glibc 2.33+ stops every program built for
            // a higher x86-64 level (init first, so the kernel panics next). Say which level and the fix.
            if let level = console.missingISALevel {
                throw NimbusError(
                    .unsupported,
                    "the guest's programs need \(level), which the instance's CPU model does not offer: launch it with --cpu-model max (or set cpuModel: max in its instance.yaml and `nimbus start` it)\(serialTail())"
                )
            }
            // A timer check that failed under a loaded TCG host: another boot usually passes.
            if console.sawTimerCheckPanic, let resetMachine, console.bootsForgotten < timerCheckResets {
                console.forgetBoot()
                try await resetMachine()
                report(.timerCheckReset, .now - start)
                continue
            }
            // A guest whose kernel panicked never comes; say so now rather than at the timeout.
            if console.sawKernelPanic {
                throw NimbusError(
                    .processFailed,
                    "the guest's kernel panicked while waiting for \(phase.rawValue) (on a TCG host too loaded to run its vCPUs, a timer check can fail this way: `nimbus start` again once the host is quieter)\(serialTail(lines: 40))"
                )
            }
            guard ContinuousClock.now < deadline else { throw timedOut(phase) }
            try? await Task.sleep(for: .milliseconds(200))
        }
        report(phase, .now - start)
    }

    /// Fails when the console said `sshServerGrace` ago that the guest's SSH server failed to start, and SSH
    /// still does not answer. The usual cause: the guest was stopped uncleanly (QEMU or the host killed) soon
    /// after cloud-init wrote its host keys, which ext4 then lost (it writes file data back after up to 30 s),
    /// and cloud-init does not write them again for the same instance-id.
    /// A cloud-init guest whose console never showed cloud-init is left to `checkCloudInitStarted`: without
    /// cloud-init there are no host keys, so sshd's failure follows, and the cause is cloud-init's.
    func checkSSHServer(_ console: SerialWatch) throws(NimbusError) {
        guard let failure = console.sshServerFailure, ContinuousClock.now - failure.at >= sshServerGrace,
            cloudInit == nil || console.sawCloudInit
        else { return }
        throw NimbusError(
            .guestSetup,
            "the guest's SSH server does not start: its console says \"\(failure.line)\" (\(InstanceManager.format(failure.at - start)) into the boot), and SSH has not answered since. Its host keys were most likely lost to an unclean stop (QEMU or the host killed soon after they were written): `nimbus recover --reseed` with the instance's name writes them again (the same keys: known_hosts stays valid). The instance is left running: `nimbus console` shows its console\(serialTail())"
        )
    }

    /// Fails when the guest showed its login prompt `cloudInitGrace` ago and cloud-init has said nothing.
    func checkCloudInitStarted(_ console: SerialWatch) throws(NimbusError) {
        guard cloudInit != nil, !console.sawCloudInit, let prompt = console.loginPromptAt,
            ContinuousClock.now - prompt >= cloudInitGrace
        else { return }
        throw NimbusError(
            .guestSetup,
            "cloud-init never started in the guest: it reached its login prompt at \(InstanceManager.format(prompt - start)) with no word from cloud-init on its console, so nothing of the instance's configuration (user, SSH keys, host keys) was applied. \(likelyCause(console)) The instance is left running for inspection: `nimbus console` shows its console\(serialTail())"
        )
    }

    /// With Ignition (no cloud-init seed): reports Ignition's end when the console shows it (first boot
    /// only; later boots do not run it), and fails at once, naming the stage and quoting Ignition's errors,
    /// when a stage failed: the initramfs then waits in its emergency shell for ever.
    func checkIgnition(_ console: SerialWatch) throws(NimbusError) {
        guard cloudInit == nil else { return }
        if console.ignitionFinished, !console.ignitionReported {
            console.ignitionReported = true
            report(.ignitionFinished, .now - start)
        }
        guard let stage = console.ignitionFailure() else { return }
        let errors = console.ignitionErrors.suffix(6).map { "  " + $0 }.joined(separator: "\n")
        throw NimbusError(
            .guestSetup,
            "Ignition failed in the guest at its \(stage) stage, so the machine stopped in its initramfs's emergency shell and will not boot further. "
                + (errors.isEmpty ? "" : "Ignition said:\n\(errors)\n")
                + "The instance is left running: `nimbus console` reaches the emergency shell, `nimbus delete --purge` and a launch with a fixed config start again\(serialTail())"
        )
    }

    /// One SSH login with the pinned host key, which Ignition wrote, looking for the result Ignition leaves
    /// for every later boot (`/etc/.ignition-result.json`); retried only while the login fails.
    func ignitionResult(deadline: ContinuousClock.Instant, console: SerialWatch) async throws(NimbusError) {
        var last = ""
        while ContinuousClock.now < deadline {
            console.poll()
            try checkIgnition(console)
            // The file is root's alone (0600); its name in /etc is anyone's to see.
            let output = try await ssh.run(["test", "-e", "/etc/.ignition-result.json"])
            if output.status == 0 { return }
            if output.status != 255 {
                throw NimbusError(
                    .guestSetup,
                    "the guest has no /etc/.ignition-result.json: Ignition never ran in it (its boot loader must pass ignition.firstboot on the first boot, as Fedora CoreOS's does), so Nimbus's configuration is not there. The instance is left running: `nimbus console` shows its console"
                )
            }
            last = output.standardError.trimmingCharacters(in: .whitespacesAndNewlines)
            try? await Task.sleep(for: .seconds(1))
        }
        throw NimbusError(
            .timeout,
            "timed out logging in to check Ignition's result (last ssh error: \(last.isEmpty ? "none" : last))\(serialTail())"
        )
    }

    /// Why cloud-init found no datasource, from the block devices the guest's kernel reported.
    func likelyCause(_ console: SerialWatch) -> String {
        let devices = console.blockDevices.isEmpty ? "none" : console.blockDevices.joined(separator: ", ")
        let seen = "The block devices the guest's kernel reported: \(devices)."
        switch cloudInit {
        case .cdrom where !console.blockDevices.contains(where: { $0.hasPrefix("sr") }):
            return
                "Likely cause: the guest's kernel saw no CD-ROM, so the seed (a virtio-scsi CD-ROM: cidata, config-2 or OVF-TRANSPORT) was invisible to it and ds-identify found no datasource; the kernel needs virtio_scsi and sr_mod, or launch with --seed-over-http, which needs neither. \(seen)"
        case .cdrom:
            return
                "Likely cause: the kernel saw the seed CD-ROM, yet ds-identify found no datasource or cloud-init is disabled in the image (/etc/cloud/cloud-init.disabled, cloud-init=disabled on the kernel command line); /run/cloud-init/ds-identify.log in the guest says which. \(seen)"
        case .http, .none:
            return
                "Likely cause: ds-identify did not find the NoCloud seed named in the SMBIOS serial number (ds=nocloud-net), or cloud-init is disabled in the image; /run/cloud-init/ds-identify.log in the guest says which. \(seen)"
        }
    }

    /// Asks cloud-init for its result, waiting in the guest until it is done, except when cloud-init is
    /// disabled there (`--wait` would then wait for ever): its status is asked at once.
    static let statusCommand = [
        "sh", "-c",
        "if [ -e /run/cloud-init/disabled ] || [ -e /etc/cloud/cloud-init.disabled ]; then exec cloud-init status --format json; fi; exec cloud-init status --wait --format json",
    ]

    /// One SSH call that blocks in the guest until cloud-init is done, retried only while the login itself
    /// fails (sshd can answer a moment before cloud-init has written the user's keys, and a guest whose
    /// cloud-init never ran has no key of ours: its console then tells, see `checkCloudInitStarted`).
    func cloudInitStatus(deadline: ContinuousClock.Instant, console: SerialWatch) async throws(NimbusError)
        -> CloudInitResult
    {
        var last = ""
        while ContinuousClock.now < deadline {
            console.poll()
            try checkCloudInitStarted(console)
            let output = try await ssh.run(Self.statusCommand)
            // 0: done, 1: error (still a finished boot); 255: ssh itself failed.
            if output.status == 0 || output.status == 1,
                let result = try? JSONDecoder().decode(CloudInitResult.self, from: Data(output.standardOutput.utf8))
            {
                return result
            }
            last = output.standardError.trimmingCharacters(in: .whitespacesAndNewlines)
            try? await Task.sleep(for: .seconds(1))
        }
        throw NimbusError(
            .timeout,
            "timed out waiting for cloud-init to finish (last ssh error: \(last.isEmpty ? "none" : last))\(serialTail())"
        )
    }

    func timedOut(_ phase: BootPhase) -> NimbusError {
        NimbusError(.timeout, "timed out waiting for \(phase.rawValue)\(serialTail())")
    }

    /// The last lines of the serial log, for error messages.
    public func serialTail(lines: Int = 15) -> String {
        guard let data = try? Data(contentsOf: serialLog), !data.isEmpty else {
            return "; the serial log \(serialLog.path) is empty"
        }
        let text = String(decoding: data.suffix(64 * 1024), as: UTF8.self)
        let tail = text.split(separator: "\n", omittingEmptySubsequences: true).suffix(lines)
            .map { "  " + $0.trimmingCharacters(in: .controlCharacters) }
        return "; last lines of \(serialLog.path):\n" + tail.joined(separator: "\n")
    }

    /// The x86-64 level (`x86-64-v3`) glibc's "CPU does not support x86-64-vN" names in `log`, if it does.
    static func missingISALevel(in log: some StringProtocol) -> String? {
        guard let line = log.range(of: "CPU does not support x86-64-v") else { return nil }
        let level = log[line.upperBound...].prefix { $0.isNumber }
        return level.isEmpty ? nil : "x86-64-v\(level)"
    }

    /// `sshBannerAnswers` on a thread of its own: its receive can block for a second, and the cooperative pool
    /// has one thread per core (two here), which every other task of the process needs meanwhile.
    func sshBannerAnswersOffThePool() async -> Bool {
        await withCheckedContinuation { continuation in
            Thread.detachNewThread { continuation.resume(returning: self.sshBannerAnswers()) }
        }
    }

    /// True when something on the forwarded port sends an SSH banner. QEMU's user-mode network accepts
    /// every connection on a forwarded port at once, so an accepted connection alone proves nothing. The
    /// receive waits at most a second on a loopback socket, where the banner or a reset comes at once.
    func sshBannerAnswers() -> Bool {
        let socket = ssh.host == "127.0.0.1" ? Loopback.connectSocket(port: ssh.port) : Self.connect(ssh.host, ssh.port)
        guard let fd = socket else { return false }
        defer { close(fd) }
        var timeout = timeval(tv_sec: 1, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        var buffer = [UInt8](repeating: 0, count: 64)
        let count = recv(fd, &buffer, buffer.count, 0)
        return count >= 4 && buffer.starts(with: Array("SSH-".utf8))
    }

    /// A TCP socket connected to `host`:`port` (a remote libvirt host), or nil; connecting waits at most 2 s
    /// (on Linux, SO_SNDTIMEO bounds connect). The caller closes it.
    static func connect(_ host: String, _ port: UInt16) -> Int32? {
        var hints = addrinfo()
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var list: UnsafeMutablePointer<addrinfo>?
        guard getaddrinfo(host, String(port), &hints, &list) == 0, let list else { return nil }
        defer { freeaddrinfo(list) }
        var entry: UnsafeMutablePointer<addrinfo>? = list
        while let current = entry {
            let fd = socket(current.pointee.ai_family, current.pointee.ai_socktype, current.pointee.ai_protocol)
            if fd >= 0 {
                var timeout = timeval(tv_sec: 2, tv_usec: 0)
                setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
                if Glibc.connect(fd, current.pointee.ai_addr, current.pointee.ai_addrlen) == 0 { return fd }
                close(fd)
            }
            entry = current.pointee.ai_next
        }
        return nil
    }
}
