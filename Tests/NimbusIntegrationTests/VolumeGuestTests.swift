import Foundation
import NimbusCore
import NimbusTestSupport
import Testing

/// Data volumes with the real Debian cloud guest under QEMU, through the `nimbus` binary as users run it: a
/// volume made at launch, formatted by the guest, kept by `delete --purge`, mounted by the next instance with
/// its data, grown while stopped, one holder at a time.
@Suite("Volumes with guests", .serialized, .requires(.guest))
struct VolumeGuestTests {
    @Test(
        "a volume made at launch keeps its data across instances, is refused to a second holder, grows while stopped, and is deleted only when free"
    )
    func volumeOutlivesInstances() async throws {
        let slot = try await GuestSlot(expectedSeconds: 400)
        defer { withExtendedLifetime(slot) {} }
        let home = try TemporaryDirectory.guestHome("nimbus-volumes")
        let image = "file://" + (Prerequisites.guestImage?.path ?? "/missing-guest-image")
        func nimbus(_ arguments: [String]) async throws -> ProgramOutput {
            let result = try await NimbusBinary.run(arguments, home: home.url)
            print("    nimbus \(arguments.joined(separator: " ")) -> \(result.status)")
            return result
        }
        func launch(_ name: String, _ volume: String) async throws -> ProgramOutput {
            try await nimbus([
                "launch", image, "--name", name, "--memory", "1G", "--volume", volume, "--timeout", "900",
            ])
        }
        do {
            let first = try await launch("va", "data:/srv:1G")
            #expect(first.status == 0, "\(first.standardError)")
            let wrote = try await nimbus([
                "exec", "va", "--", "sh", "-c",
                "echo kept | sudo tee /srv/kept.txt >/dev/null && sudo touch /etc/lost.txt && findmnt -n -o FSTYPE,LABEL /srv",
            ])
            #expect(
                wrote.status == 0 && wrote.standardOutput.contains("ext4"),
                "\(wrote.standardOutput)\(wrote.standardError)")
            #expect(wrote.standardOutput.contains("nv-data"), "\(wrote.standardOutput)")

            // One holder at a time: refused before anything is made.
            let second = try await launch("vb", "data:/data")
            #expect(second.status == NimbusError.Code.alreadyExists.exitStatus, "\(second.standardError)")
            #expect(second.standardError.contains("attached to va"), "\(second.standardError)")
            #expect(!(try await nimbus(["list", "--format", "json"])).standardOutput.contains("\"vb\""))
            let held = try await nimbus(["volume", "delete", "data"])
            #expect(
                held.status == NimbusError.Code.invalidState.exitStatus && held.standardError.contains("attached to va")
            )

            // delete --purge gives the volume back with its data.
            let purge = try await nimbus(["delete", "--purge", "va"])
            #expect(purge.status == 0 && purge.standardError.contains("volume data remains"), "\(purge.standardError)")
            let free = try await nimbus(["volume", "info", "data", "--format", "json"])
            #expect(free.status == 0 && !free.standardOutput.contains("attachedTo"), "\(free.standardOutput)")

            let next = try await launch("vb", "data:/data")
            #expect(next.status == 0, "\(next.standardError)")
            let read = try await nimbus(["exec", "vb", "--", "cat", "/data/kept.txt"])
            #expect(read.standardOutput == "kept\n", "\(read.standardOutput)\(read.standardError)")
            // A fresh root: what the first instance wrote under /etc is not there.
            #expect(try await nimbus(["exec", "vb", "--", "test", "-e", "/etc/lost.txt"]).status == 1)

            // Grown while stopped; the guest's filesystem follows at the next start.
            let running = try await nimbus(["volume", "resize", "data", "--size", "2G"])
            #expect(
                running.status == NimbusError.Code.invalidState.exitStatus && running.standardError.contains("stop vb"))
            #expect(try await nimbus(["stop", "vb", "--timeout", "120"]).status == 0)
            #expect(try await nimbus(["volume", "resize", "data", "--size", "2G"]).status == 0)
            let started = try await nimbus(["start", "vb", "--timeout", "900"])
            #expect(started.status == 0, "\(started.standardError)")
            let size = try await nimbus(["exec", "vb", "--", "df", "-B1M", "--output=size", "/data"])
            let megabytes = Int(
                size.standardOutput.split(separator: "\n").last?.trimmingCharacters(in: .whitespaces) ?? "")
            #expect((megabytes ?? 0) > 1800, "\(size.standardOutput)\(size.standardError)")
            #expect(try await nimbus(["exec", "vb", "--", "cat", "/data/kept.txt"]).standardOutput == "kept\n")

            #expect(try await nimbus(["delete", "--purge", "vb"]).status == 0)
            #expect(try await nimbus(["volume", "delete", "data"]).status == 0)
            let none = try await nimbus(["volume", "list", "--format", "json"])
            #expect(none.status == 0 && !none.standardOutput.contains("data"), "\(none.standardOutput)")
        } catch {
            Issue.record(error)
        }
        _ = try? await nimbus(["delete", "--purge", "--all"])
        home.remove()
    }
}
