import Foundation
import NimbusCore
import NimbusInstances
import NimbusLibvirt
import NimbusMachines
import NimbusTestSupport
import Testing

/// Persistent libvirt domains outliving their instance folder: `nimbus list` marks them, `nimbus recover`
/// rebuilds the folder from the domain's metadata, and every way recover can be refused. Through the real
/// binary and the host's libvirtd; the guest is launched without waiting and stopped at once, as no test
/// here needs it to boot (InstanceLifecycleTests' libvirt scenario does, with exec after a recover).
@Suite("Recover from libvirt", .serialized, .requires(.guest, .libvirt))
struct LibvirtRecoverTests {
    static let uri = LibvirtDriver.defaultURI
    var image: String { "file://" + (Prerequisites.guestImage?.path ?? "/missing") }

    static func uniqueName(_ prefix: String) throws -> InstanceName {
        try InstanceName("\(prefix)-\(UUID().uuidString.prefix(6).lowercased())")
    }

    /// Destroys and undefines a domain this test made, whatever failed.
    static func removeDomain(_ domain: String) {
        for arguments in [["destroy", domain], ["undefine", "--nvram", "--snapshots-metadata", domain]] {
            let process = Process()
            process.executableURL = URL(fileURLWithPath: "/usr/bin/virsh")
            process.arguments = ["-c", uri] + arguments
            process.standardOutput = FileHandle.nullDevice
            process.standardError = FileHandle.nullDevice
            try? process.run()
            process.waitUntilExit()
        }
    }

    static func listJSON(_ home: TemporaryDirectory) async throws -> [[String: Any]] {
        let list = try await NimbusBinary.run(["list", "--format", "json"], home: home.url)
        #expect(list.status == 0, "\(list.standardError)")
        return (try JSONSerialization.jsonObject(with: Data(list.standardOutput.utf8)) as? [[String: Any]]) ?? []
    }

    @Test(
        "a lost folder: list marks the domain missing, a same-named instance blocks recover, recover rebuilds, delete --purge undefines"
    )
    func lostFolder() async throws {
        let slot = try await GuestSlot(expectedSeconds: 60)
        defer { withExtendedLifetime(slot) {} }
        let lease = try await LibvirtDaemon.lease()
        defer { lease.release() }
        let home = try TemporaryDirectory.guestHome("nimbus-recover")
        let name = try Self.uniqueName("rc")
        let domain = LibvirtDomainXML.domainName(for: name.rawValue)
        defer {
            Self.removeDomain(domain)
            home.remove()
        }
        // UEFI (auto would pick BIOS under TCG): its variable store lives in the folder, so losing the folder
        // loses a file the domain needs, which recover must name.
        let launch = try await NimbusBinary.run(
            [
                "launch", image, "--name", name.rawValue, "--driver", "libvirt", "--memory", "512M", "--accel", "tcg",
                "--firmware", "uefi", "--no-wait",
            ], home: home.url)
        #expect(launch.status == 0, "\(launch.standardError)")
        // A running UEFI domain is not snapshotted (libvirt 9.0 refuses pflash domains): the way that works is named.
        let live = try await NimbusBinary.run(["snapshot", "create", name.rawValue, "s1"], home: home.url)
        #expect(live.status == NimbusError.Code.invalidState.exitStatus, "\(live.standardError)")
        #expect(live.standardError.contains("stop it first"), "\(live.standardError)")
        // The console attaches through libvirt's stream and Ctrl-] detaches.
        let console = try await NimbusBinary.run(["console", name.rawValue], home: home.url, input: "\u{1d}")
        #expect(console.status == 0, "\(console.standardError)")
        #expect(console.standardError.contains("attached to \(name)'s console"), "\(console.standardError)")
        #expect(console.standardError.contains("detached"))
        #expect(try await NimbusBinary.run(["stop", "--force", name.rawValue], home: home.url).status == 0)
        let off = try await NimbusBinary.run(["console", name.rawValue], home: home.url)
        #expect(off.status == NimbusError.Code.invalidState.exitStatus)
        #expect(off.standardError.contains("is stopped"), "\(off.standardError)")

        // Snapshots of the stopped UEFI instance: qemu-img on the overlay, the domain left defined and shut off.
        for step in [["create", name.rawValue, "s1"], ["restore", name.rawValue, "s1"]] {
            let result = try await NimbusBinary.run(["snapshot"] + step, home: home.url)
            #expect(result.status == 0, "\(step): \(result.standardError)")
        }
        let snapshots = try await NimbusBinary.run(["snapshot", "list", name.rawValue], home: home.url)
        #expect(snapshots.standardOutput.contains("s1"), "\(snapshots.standardOutput)")
        #expect(try await NimbusBinary.run(["snapshot", "delete", name.rawValue, "s1"], home: home.url).status == 0)
        let none = try await NimbusBinary.run(["snapshot", "list", name.rawValue, "--format", "json"], home: home.url)
        let remaining = try JSONSerialization.jsonObject(with: Data(none.standardOutput.utf8)) as? [Any]
        #expect(remaining?.isEmpty == true, "\(none.standardOutput)")

        let stopped = try await Self.listJSON(home)
        #expect(stopped.first?["state"] as? String == "stopped")
        #expect(stopped.first?["driver"] as? String == "libvirt")
        #expect(stopped.first?["host"] as? String == "local")
        #expect(try await LibvirtDaemon.virsh(["domstate", domain]).standardOutput.contains("shut off"))
        let table = try await NimbusBinary.run(["list"], home: home.url).standardOutput
        #expect(table.contains("DRIVER") && table.contains("HOST"), "\(table)")

        // The store loses the instance's folder; the domain remains, and list shows it as missing.
        let folder = home.paths.instances.appending(path: name.rawValue)
        try FileManager.default.removeItem(at: folder)
        let missing = try await Self.listJSON(home)
        #expect(missing.count == 1)
        #expect(missing.first?["name"] as? String == name.rawValue)
        #expect(missing.first?["state"] as? String == "missing")
        #expect((missing.first?["error"] as? String)?.contains("nimbus recover") == true)
        #expect(missing.first?["memory"] != nil)

        // A new instance took the name meanwhile: recover refuses, naming both.
        var other = InstanceSpec(name: name, image: image)
        other.driver = .qemu
        let store = InstanceStore(paths: home.paths)
        try await store.withLock(name) { _ in _ = try await store.create(other) { _ in InstanceState() } }
        let blocked = try await NimbusBinary.run(["recover", name.rawValue], home: home.url)
        #expect(blocked.status == NimbusError.Code.alreadyExists.exitStatus, "\(blocked.standardError)")
        #expect(blocked.standardError.contains("exists already (driver qemu)"), "\(blocked.standardError)")
        #expect(try await NimbusBinary.run(["delete", "--purge", name.rawValue], home: home.url).status == 0)
        // The qemu instance's purge left the domain alone.
        #expect(try await LibvirtDaemon.virsh(["domstate", domain]).standardOutput.contains("shut off"))

        // Recover without names rebuilds every lost instance of this store.
        let recover = try await NimbusBinary.run(["recover"], home: home.url)
        #expect(recover.status == 0, "\(recover.standardError)")
        #expect(recover.standardOutput == "\(name)\n")
        #expect(recover.standardError.contains("went with the folder"), "\(recover.standardError)")
        let spec = try store.loadSpec(name)
        #expect(spec.driver.name == "libvirt" && spec.memory == .mebibytes(512))
        #expect(try String(contentsOf: store.directory(name).knownHosts, encoding: .utf8).contains("ssh-ed25519"))
        let recovered = try await Self.listJSON(home)
        #expect(recovered.first?["state"] as? String == "stopped", "\(recovered)")
        // The state the domain keeps is the one after the start: the accelerator it chose, the SSH port.
        #expect(recovered.first?["accelerator"] as? String == "tcg", "\(recovered)")
        #expect(try store.loadState(name).sshPort != nil)
        // Nothing is left to recover.
        let nothing = try await NimbusBinary.run(["recover"], home: home.url)
        #expect(nothing.status == NimbusError.Code.notFound.exitStatus)
        #expect(nothing.standardError.contains("nothing to recover"), "\(nothing.standardError)")

        // delete --purge undefines the domain and forgets the daemon with the last instance on it.
        let purge = try await NimbusBinary.run(["delete", "--purge", name.rawValue], home: home.url)
        #expect(purge.status == 0, "\(purge.standardError)")
        #expect(try await LibvirtDaemon.domains().contains(domain) == false)
        let data = try FileManager.default.contentsOfDirectory(atPath: home.paths.data.path)
        #expect(Set(data).isSubset(of: ["instances", "keys", "locks", "ssh"]), "\(data)")
    }

    @Test("recover with nothing to recover says so: no daemon known, or no lost domain on the one named")
    func nothingToRecover() async throws {
        let lease = try await LibvirtDaemon.lease()
        defer { lease.release() }
        try await TemporaryDirectory.with("nimbus-recover") { home in
            let none = try await NimbusBinary.run(["recover"], home: home.url)
            #expect(none.status == NimbusError.Code.notFound.exitStatus)
            #expect(none.standardError.contains("knows no libvirt daemon"), "\(none.standardError)")
            #expect(none.standardError.contains("--connect"))
            let empty = try await NimbusBinary.run(["recover", "--connect", Self.uri], home: home.url)
            #expect(empty.status == NimbusError.Code.notFound.exitStatus)
            #expect(empty.standardError.contains("nothing to recover: no Nimbus domain on \(Self.uri)"))
            let unknown = try await NimbusBinary.run(["recover", "--connect", Self.uri, "ghost"], home: home.url)
            #expect(unknown.status == NimbusError.Code.notFound.exitStatus)
            #expect(unknown.standardError.contains("instance \"ghost\" does not exist"), "\(unknown.standardError)")
            let bad = try await NimbusBinary.run(["recover", "--connect", "qemu:/system"], home: home.url)
            #expect(bad.status == NimbusError.Code.invalidArgument.exitStatus, "\(bad.standardError)")
        }
    }

    @Test("a domain without Nimbus metadata is never recovered, and left as it was")
    func foreignDomain() async throws {
        let lease = try await LibvirtDaemon.lease()
        defer { lease.release() }
        try await TemporaryDirectory.with("nimbus-recover") { home in
            let name = try Self.uniqueName("fr")
            let domain = LibvirtDomainXML.domainName(for: name.rawValue)
            let file = home.url.appending(path: "foreign.xml")
            try """
            <domain type='qemu'><name>\(domain)</name><memory unit='MiB'>64</memory>
            <os><type arch='x86_64' machine='q35'>hvm</type></os></domain>
            """.write(to: file, atomically: true, encoding: .utf8)
            try await LibvirtDaemon.virsh(["define", file.path]).check()
            defer { Self.removeDomain(domain) }
            let before = try await LibvirtDaemon.virsh(["dumpxml", domain]).standardOutput

            let result = try await NimbusBinary.run(["recover", "--connect", Self.uri, name.rawValue], home: home.url)
            #expect(result.status == NimbusError.Code.alreadyExists.exitStatus)
            #expect(result.standardError.contains("was not created by Nimbus"), "\(result.standardError)")
            #expect(result.standardError.contains(domain))
            // Without names it is not even considered.
            let all = try await NimbusBinary.run(["recover", "--connect", Self.uri], home: home.url)
            #expect(all.standardError.contains("nothing to recover"), "\(all.standardError)")
            #expect(try await LibvirtDaemon.virsh(["dumpxml", domain]).standardOutput == before)
            #expect(!InstanceStore(paths: home.paths).exists(name))
        }
    }

    @Test("a domain of another store is not recovered into this one")
    func otherStore() async throws {
        let slot = try await GuestSlot(expectedSeconds: 60)
        defer { withExtendedLifetime(slot) {} }
        let lease = try await LibvirtDaemon.lease()
        defer { lease.release() }
        let first = try TemporaryDirectory.guestHome("nimbus-recover-a")
        let second = try TemporaryDirectory.guestHome("nimbus-recover-b")
        let name = try Self.uniqueName("os")
        let domain = LibvirtDomainXML.domainName(for: name.rawValue)
        defer {
            Self.removeDomain(domain)
            first.remove()
            second.remove()
        }
        let launch = try await NimbusBinary.run(
            [
                "launch", image, "--name", name.rawValue, "--driver", "libvirt", "--memory", "512M", "--accel", "tcg",
                "--no-wait",
            ], home: first.url)
        #expect(launch.status == 0, "\(launch.standardError)")
        #expect(try await NimbusBinary.run(["stop", "--force", name.rawValue], home: first.url).status == 0)
        // The other store lists nothing of it, and will not take it.
        #expect(try await Self.listJSON(second).isEmpty)
        let result = try await NimbusBinary.run(["recover", "--connect", Self.uri, name.rawValue], home: second.url)
        #expect(result.status == NimbusError.Code.alreadyExists.exitStatus)
        #expect(result.standardError.contains("not to this store"), "\(result.standardError)")
        #expect(try await NimbusBinary.run(["delete", "--purge", name.rawValue], home: first.url).status == 0)
        #expect(try await LibvirtDaemon.domains().contains(domain) == false)
    }
}

extension ProgramOutput {
    /// Fails with the program's stderr unless it exited 0.
    @discardableResult
    func check() throws -> ProgramOutput {
        guard status == 0 else { throw NimbusError(.processFailed, "exit \(status): \(standardError)") }
        return self
    }
}
