import ArgumentParser
import NimbusCore
import NimbusInstances

/// `nimbus doctor [--fix]`.
struct HostDoctor: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "doctor", abstract: "Check the host and the store; repair what is safe with --fix.")

    @OptionGroup var global: Flags.Global

    @Flag(help: "Repair what is safe to repair (stale pidfiles, sockets, abandoned folders, dead QEMU).")
    var fix = false

    func run() async throws {
        let context = try CommandContext(global: global)
        let findings = await context.manager.doctor(fix: fix)
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
