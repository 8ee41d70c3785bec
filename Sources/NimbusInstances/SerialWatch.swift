import Foundation
import NimbusCore

/// What the guest's serial console has shown so far, read from the log incrementally: each poll reads only
/// what was appended since the last. Used by one wait at a time.
final class SerialWatch {
    let url: URL
    private var offset: UInt64 = 0
    private var partialLine = ""
    /// The end of the log: at least its last 64 KiB (cut back to that when it doubles, so a poll costs what it
    /// read, not the tail's size).
    private(set) var tail = ""
    /// The x86-64 level the guest's C library asked for and the CPU lacked (`x86-64-v2`), once printed.
    private(set) var missingISALevel: String?
    /// The guest's kernel panicked.
    private(set) var sawKernelPanic = false
    /// The panic was the kernel's early timer check (`IO-APIC + timer doesn't work!`): under TCG its vCPU did
    /// not run for the few milliseconds the check waits for a timer interrupt (a loaded host), not a fault of
    /// the guest; the next boot usually passes.
    private(set) var sawTimerCheckPanic = false
    /// How many boots `forgetBoot` has set aside.
    private(set) var bootsForgotten = 0
    /// systemd's line saying the guest's SSH server failed to start (`Failed to start ssh.service - OpenBSD
    /// Secure Shell server.`), colours removed, and when it first showed.
    private(set) var sshServerFailure: (line: String, at: ContinuousClock.Instant)?
    /// The kernel's banner (`Linux version`) has been printed.
    private(set) var sawKernel = false
    /// cloud-init's banner (`Cloud-init v. 22.4.2 running 'init-local'`) has been printed.
    private(set) var sawCloudInit = false
    /// When a getty's login prompt (`localhost login: `) was first seen.
    private(set) var loginPromptAt: ContinuousClock.Instant?
    /// The block devices the kernel reported (`vda (virtio disk)`, `sr0 (CD-ROM)`), in order, once each.
    private(set) var blockDevices: [String] = []
    /// systemd reached `ignition-complete.target` in the initramfs: every Ignition stage succeeded.
    private(set) var ignitionFinished = false
    /// Whether `ignitionFinished` has been reported (by `Readiness.checkIgnition`).
    var ignitionReported = false
    /// The Ignition stage whose unit failed (`fetch-offline`, `files`), and when the failure showed.
    private var failedStage: String?
    private var failedStageAt: ContinuousClock.Instant?
    private var collectingErrors = false
    /// dracut's emergency shell showed after a failed stage.
    private var sawEmergency = false
    /// Ignition's own error lines (`ignition[412]: ... error ...`, `CRITICAL`), in order.
    private(set) var ignitionErrors: [String] = []

    init(_ url: URL) { self.url = url }

    /// Sets aside what the console showed of the boot so far (the machine was reset): from here on only what
    /// the next boot prints counts.
    func forgetBoot() {
        poll()
        let kept = (offset, tail, bootsForgotten + 1)
        let fresh = SerialWatch(url)
        (missingISALevel, sawKernelPanic, sawTimerCheckPanic) = (fresh.missingISALevel, false, false)
        (sshServerFailure, sawKernel, sawCloudInit, loginPromptAt) = (nil, false, false, nil)
        (blockDevices, ignitionFinished, ignitionReported, failedStage, failedStageAt) = ([], false, false, nil, nil)
        (collectingErrors, sawEmergency, ignitionErrors, partialLine) = (false, false, [], "")
        (offset, tail, bootsForgotten) = kept
    }

    /// Reads what the log gained since the last poll.
    func poll() {
        guard let handle = try? FileHandle(forReadingFrom: url) else { return }
        defer { try? handle.close() }
        let size = (try? handle.seekToEnd()) ?? 0
        if size < offset {  // rotated or cut: start over
            offset = 0
            partialLine = ""
        }
        guard size > offset, (try? handle.seek(toOffset: offset)) != nil,
            let data = try? handle.read(upToCount: Int(size - offset))
        else { return }
        offset += UInt64(data.count)
        let text = String(decoding: data, as: UTF8.self)
        tail += text
        if tail.utf8.count > 2 * 65_536 { tail = String(decoding: tail.utf8.suffix(65_536), as: UTF8.self) }
        // Split on Characters that are newlines: a console's "\r\n" is one Character, never equal to "\n".
        var lines = (partialLine + text).split(omittingEmptySubsequences: false, whereSeparator: \.isNewline)
        partialLine = String(lines.removeLast())
        for line in lines { scan(line) }
        // A login prompt waits for input: it ends no line.
        if loginPromptAt == nil, Self.isLoginPrompt(partialLine) { loginPromptAt = .now }
    }

    private func scan(_ line: Substring) {
        if !sawKernel, line.contains("Linux version") { sawKernel = true }
        if !sawCloudInit, line.contains("Cloud-init v.") { sawCloudInit = true }
        if loginPromptAt == nil, Self.isLoginPrompt(line) { loginPromptAt = .now }
        if missingISALevel == nil { missingISALevel = Readiness.missingISALevel(in: line) }
        if !sawKernelPanic, line.contains("Kernel panic - not syncing") {
            sawKernelPanic = true
            sawTimerCheckPanic = line.contains("IO-APIC + timer doesn't work")
        }
        if sshServerFailure == nil, line.contains("Failed to start") {
            // systemd shortens the unit's name to fit the console (`ssh.servic…`) and drops the escape byte of
            // the colour reset after it: the description is matched, and the stray `[0m` goes.
            let plain = Self.withoutColours(line).replacingOccurrences(of: "…[0m", with: "…")
            if Self.sshServerNames.contains(where: plain.contains) {
                sshServerFailure = (plain.trimmingCharacters(in: .whitespaces), .now)
            }
        }
        if let device = Self.blockDevice(in: line), !blockDevices.contains(device) { blockDevices.append(device) }
        scanIgnition(line)
    }

    /// How systemd's `Failed to start` line names the SSH server: by its unit's description (Debian's and
    /// Ubuntu's `ssh.service`, Fedora's `sshd.service`), or by the unit when it is not shortened.
    static let sshServerNames = [
        "OpenBSD Secure Shell server", "OpenSSH server daemon", "start ssh.service", "start sshd.service",
    ]

    /// Ignition's progress as systemd and Ignition print it on the console, colours removed: `Reached target
    /// ignition-co…te.target - Ignition Complete.` (systemd shortens unit names to fit, so the descriptions
    /// are what is matched), `Failed to start ignition-files.service - Ignition (files).`, Ignition's error
    /// lines (its own `ignition[PID]: ... error` lines, or those the image's emergency hook lists under
    /// "Ignition's errors"), and dracut's emergency shell, which a failed stage ends in.
    private func scanIgnition(_ raw: Substring) {
        if collectingErrors {
            let text = Self.withoutColours(raw).trimmingCharacters(
                in: .whitespacesAndNewlines.union(.controlCharacters))
            if text.hasPrefix("------") {
                collectingErrors = false
            } else {
                recordIgnitionError(text)
            }
            return
        }
        guard raw.contains("gnition") || raw.contains("mergency") else { return }
        let line = Self.withoutColours(raw)
        // The image's emergency hook lists Ignition's journal lines under this header, up to a "------" rule.
        if line.contains("Ignition's errors") {
            collectingErrors = true
            return
        }
        if line.contains("Reached target"), line.contains("Ignition Complete") { ignitionFinished = true }
        if failedStage == nil, line.contains("Failed to start"), let open = line.range(of: "Ignition (") {
            failedStage = String(line[open.upperBound...].prefix { $0 != ")" })
            failedStageAt = .now
        }
        if line.contains("ignition["), line.contains("error") || line.contains("CRITICAL") {
            recordIgnitionError(line.trimmingCharacters(in: .whitespacesAndNewlines.union(.controlCharacters)))
        }
        if failedStage != nil, line.contains("mergency") { sawEmergency = true }
    }

    /// Keeps one of Ignition's error lines, once.
    private func recordIgnitionError(_ text: String) {
        if !text.isEmpty, !ignitionErrors.contains(text) { ignitionErrors.append(text) }
    }

    /// The failed stage once the emergency shell and Ignition's errors have shown, or 10 s after the failure
    /// whatever showed (a dracut that words it otherwise): nothing boots after a failed stage either way.
    func ignitionFailure() -> String? {
        guard let failedStage, let failedStageAt else { return nil }
        // The emergency shell's hook prints the failed units' logs, Ignition's errors among them, just after.
        if sawEmergency, !ignitionErrors.isEmpty { return failedStage }
        return ContinuousClock.now - failedStageAt > .seconds(10) ? failedStage : nil
    }

    /// `line` without terminal escape sequences (`ESC [ ... letter`), which systemd colours its status with.
    static func withoutColours(_ line: some StringProtocol) -> String {
        var result = ""
        var escape = false
        var iterator = line.unicodeScalars.makeIterator()
        while let scalar = iterator.next() {
            if escape {
                if scalar.properties.isAlphabetic { escape = false }
                continue
            }
            if scalar == "\u{1b}" {
                escape = true
                _ = iterator.next()  // the "["
                continue
            }
            result.unicodeScalars.append(scalar)
        }
        return result
    }

    /// A getty's prompt, `localhost login: `, at the start of a line (the console may append kernel or
    /// cloud-init output to it), with the terminal's carriage returns ignored.
    static func isLoginPrompt(_ line: some StringProtocol) -> Bool {
        let text = line.trimmingCharacters(in: .whitespacesAndNewlines.union(.controlCharacters))
        guard let prompt = text.range(of: " login:") else { return false }
        let host = text[..<prompt.lowerBound]
        let after = text[prompt.upperBound...].drop { $0 == " " }
        return !host.isEmpty && !host.contains(" ") && !host.contains("[") && (after.isEmpty || after.first == "[")
    }

    /// The disk named in a kernel line such as `virtio_blk virtio2: [vda] 8388608 512-byte logical blocks`
    /// or `sr 0:0:0:0: [sr0] scsi3-mmc drive`, with its kind.
    static func blockDevice(in line: some StringProtocol) -> String? {
        guard let open = line.firstIndex(of: "["), let close = line[open...].firstIndex(of: "]") else {
            return nil
        }
        // The timestamp `[    1.234]` comes first: look at the next bracket too.
        let name = line[line.index(after: open)..<close]
        if name.first?.isNumber == true || name.first == " " {
            return blockDevice(in: line[line.index(after: close)...])
        }
        let kinds: [(prefix: String, kind: String)] = [("vd", "virtio disk"), ("sd", "SCSI disk"), ("sr", "CD-ROM")]
        guard let match = kinds.first(where: { name.hasPrefix($0.prefix) }), name.count <= 6,
            name.allSatisfy({ $0.isLetter || $0.isNumber })
        else { return nil }
        return "\(name) (\(match.kind))"
    }
}
