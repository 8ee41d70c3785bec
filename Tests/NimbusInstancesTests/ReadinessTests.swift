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

    @Test("the level is read from glibc's line only")
    func levelParsing() {
        #expect(Readiness.missingISALevel(in: "Fatal glibc error: CPU does not support x86-64-v2\n") == "x86-64-v2")
        #expect(Readiness.missingISALevel(in: "CPU does not support x86-64-v") == nil)
        #expect(Readiness.missingISALevel(in: "[    0.1] x86/cpu: x86-64-v3 is fine") == nil)
    }
}
