import Foundation
import NimbusCore
import NimbusTestSupport
import Testing

/// `Examples/LaunchAndRun`, the library client of the public API, run as built beside the tests against the real
/// Debian guest: it launches, runs a command over SSH, prints its output and deletes the instance.
@Suite("The library example", .serialized, .requires(.guest))
struct ExampleTests {
    @Test("LaunchAndRun launches the guest, prints what a command printed in it, and leaves no instance behind")
    func launchAndRun() async throws {
        let slot = try await GuestSlot(expectedSeconds: 190)
        defer { withExtendedLifetime(slot) {} }
        try await TemporaryDirectory.with("nimbus-example") { home in
            let example = NimbusBinary.url.deletingLastPathComponent().appending(path: "LaunchAndRun")
            let image = "file://" + (Prerequisites.guestImage?.path ?? "/missing-guest-image")
            // On the system's QEMU (an empty NIMBUS_QEMU), like MachineBootTests: scripts/test gives the other
            // QEMU guests a newer one.
            let result = try await ProgramRunner.output(
                example.path, [image, "cat", "/etc/hostname"],
                environment: ["NIMBUS_HOME": home.url.path, "NIMBUS_QEMU": ""])
            #expect(result.status == 0, "\(result.standardError)")
            #expect(result.standardOutput == "example\n", "\(result.standardOutput)")
            let list = try await NimbusBinary.run(["list", "--format", "json"], home: home.url)
            #expect(list.status == 0, "\(list.standardError)")
            let instances = try JSONSerialization.jsonObject(with: Data(list.standardOutput.utf8)) as? [Any]
            #expect(instances?.isEmpty == true, "\(list.standardOutput)")
            // A bad image reference is the library's error, with its exit status.
            let bad = try await ProgramRunner.output(
                example.path, ["file:///nonexistent.qcow2"], environment: ["NIMBUS_HOME": home.url.path])
            #expect(bad.status != 0 && bad.standardError.contains("/nonexistent.qcow2"), "\(bad.standardError)")
        }
    }
}
