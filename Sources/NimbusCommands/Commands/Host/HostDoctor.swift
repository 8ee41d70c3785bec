import ArgumentParser
import NimbusCore
import NimbusInstances

/// `nimbus doctor [--fix]`.
struct HostDoctor: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "doctor", abstract: "Check the host and the store; repair what is safe with --fix.")

    @OptionGroup var global: Flags.Global

    @Flag(
        help:
            "Repair what is safe to repair (stale pidfiles and sockets, abandoned folders, orphaned processes, a damaged state.json, known_hosts or image record); a damaged instance.yaml or config.yaml is named, not rewritten."
    )
    var fix = false

    @Flag(
        help:
            "Also audit what each instance exposes: folders, keys, seeds and sockets its owner's alone, no user-data on any command line, port forwards on the loopback address only, SSH pinned (--fix removes group and other permissions)."
    )
    var security = false

    func run() async throws {
        // A damaged config.yaml is reported, never rewritten (it is the user's), and the rest is checked with
        // the defaults.
        var findings: [DoctorFinding] = []
        let config: NimbusConfig
        do {
            config = try NimbusConfig.load(paths: NimbusPaths.resolve())
        } catch {
            findings.append(
                DoctorFinding(
                    subject: "config.yaml", detail: "\(error.message); not touched: it is yours to mend", ok: false))
            config = NimbusConfig()
        }
        let context = try CommandContext(global: global, config: config)
        findings += await context.manager.doctor(fix: fix)
        if security { findings += await context.manager.securityAudit(fix: fix) }
        for finding in findings {
            Console.result(
                "\(finding.ok ? "ok  " : finding.fixed ? "fixed" : finding.warning ? "warn" : "FAIL") \(finding.subject): \(finding.detail)\n"
            )
        }
        if findings.contains(where: { !$0.ok && !$0.fixed && !$0.warning }) {
            throw NimbusError(
                .invalidState, "doctor found problems\(fix ? "" : ": `nimbus doctor --fix` repairs what is safe")")
        }
    }
}
