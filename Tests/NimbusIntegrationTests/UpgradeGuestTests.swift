import Foundation
import NimbusCore
import NimbusInstances
import NimbusTestSupport
import Testing

/// Upgrade by relaunch with the real Debian guests under QEMU, through the `nimbus` binary as users run it,
/// pulling `debian:12` and `debian:13` from a mirror laid out as Debian's cloud tree: a newer serial of the
/// same release; a new root that cannot boot rolls back by itself; the next release from a fleet file, then
/// back.
@Suite(
    "Upgrade with guests", .serialized,
    .requires(.releases, .root, .programs("ip", "dnsmasq", "nft", "sha512sum")))
struct UpgradeGuestTests {
    /// A Nimbus home and a Debian mirror made from the guest images, with the binary run against both.
    struct Scene {
        let home: TemporaryDirectory
        let mirror: TemporaryDirectory
        /// The instance `guest` runs commands in.
        let instance: String

        init(_ label: String, instance: String) async throws {
            home = try TemporaryDirectory.guestHome(label)
            mirror = try TemporaryDirectory("nimbus-debian-mirror")
            self.instance = instance
            try await Prerequisites.makeDebianMirror(mirror.url)
        }

        func nimbus(_ arguments: [String]) async throws -> ProgramOutput {
            let result = try await NimbusBinary.run(
                arguments, home: home.url, environment: ["NIMBUS_MIRROR_DEBIAN": mirror.url.absoluteString])
            print("    nimbus \(arguments.joined(separator: " ")) -> \(result.status)")
            return result
        }

        /// `command` run by `sh -c` in the instance, expected to succeed; its stdout.
        func guest(_ command: String) async throws -> String {
            let result = try await nimbus(["exec", instance, "--", "sh", "-c", command])
            #expect(result.status == 0, "\(command): \(result.standardError)")
            return result.standardOutput
        }

        func remove() {
            home.remove()
            mirror.remove()
        }
    }
    @Test(
        "upgrade keeps the volume, host key and network address on a fresh root; a root that cannot boot rolls back; upgrade --image debian:13 and rollback; a fleet file upgrades to debian:13; kill -9 of an upgrade leaves one whole root"
    )
    func upgradeAndRollback() async throws {
        let slot = try await GuestSlot(expectedSeconds: 1300)
        defer { withExtendedLifetime(slot) {} }
        let scene = try await Scene("nimbus-upgrade", instance: "u")
        let (home, mirror, nimbus, guest) = (scene.home, scene.mirror, scene.nimbus, scene.guest)
        let network = "up\(String(UUID().uuidString.prefix(4)).lowercased())"
        do {
            #expect(try await nimbus(["network", "create", network]).status == 0)
            let launched = try await nimbus([
                "launch", "debian:12", "--name", "u", "--memory", "1G", "--volume", "data:/srv:1G", "--network",
                network,
                "--timeout", "900",
            ])
            #expect(launched.status == 0, "\(launched.standardError)")
            _ = try await guest("echo kept | sudo tee /srv/kept.txt >/dev/null && sudo touch /etc/lost.txt")
            let hostKey = try await guest("sudo cat /etc/ssh/ssh_host_ed25519_key.pub")
            let info = try await nimbus(["info", "u", "--format", "json"])
            let infos = try JSONDecoder().decode([InstanceInfo].self, from: Data(info.standardOutput.utf8))
            let address = try #require(infos.first?.networks.first?.address, "\(info.standardOutput)")
            #expect(try await guest("cat /etc/cloud/build.info").contains("serial: 20260110-0001"))

            // A newer serial appears upstream: `list` says so once the metadata is refreshed.
            try await Prerequisites.publishDebianBuild(mirror.url, codename: "bookworm", serial: "20260210-0002")
            let refreshed = try await nimbus(["image", "refresh"])
            #expect(refreshed.status == 0 && refreshed.standardOutput.contains("20260210-0002"))
            let listed = try await nimbus(["list"])
            #expect(listed.standardOutput.contains("update: 20260210-0002"), "\(listed.standardOutput)")
            let plan = try await nimbus(["upgrade", "--all", "--dry-run"])
            #expect(plan.standardOutput.contains("20260210-0002"), "\(plan.standardOutput)")
            // Without --yes and without a terminal nothing happens.
            let unconfirmed = try await nimbus(["upgrade", "u"])
            #expect(unconfirmed.status == NimbusError.Code.invalidArgument.exitStatus)
            #expect(unconfirmed.standardError.contains("--yes"), "\(unconfirmed.standardError)")
            #expect(try await guest("cat /etc/cloud/build.info").contains("20260110-0001"))

            let upgraded = try await nimbus(["upgrade", "u", "--yes"])
            #expect(upgraded.status == 0, "\(upgraded.standardError)")
            #expect(try await guest("cat /etc/cloud/build.info").contains("serial: 20260210-0002"))
            #expect(try await guest("cat /srv/kept.txt") == "kept\n")
            #expect(try await nimbus(["exec", "u", "--", "test", "-e", "/etc/lost.txt"]).status == 1)
            #expect(try await guest("sudo cat /etc/ssh/ssh_host_ed25519_key.pub") == hostKey)
            #expect(try await guest("ip -4 -o addr show").contains(" \(address)/"))
            let afterInfo = try await nimbus(["info", "u"])
            #expect(afterInfo.standardOutput.contains("Rollback:"), "\(afterInfo.standardOutput)")
            #expect(!(try await nimbus(["list"])).standardOutput.contains("update:"))

            // A root that cannot boot (a blank disk) is given up and the instance is back on its root.
            let blank = home.url.appending(path: "blank.qcow2")
            try await ProgramRunner.run("qemu-img", ["create", "-q", "-f", "qcow2", blank.path, "2G"])
            let broken = try await nimbus(["upgrade", "u", "--image", blank.absoluteString, "--yes", "--timeout", "60"])
            #expect(broken.status == NimbusError.Code.guestSetup.exitStatus, "\(broken.standardError)")
            #expect(broken.standardError.contains("is back on debian 12 (20260210-0002)"), "\(broken.standardError)")
            #expect(try await guest("cat /etc/debian_version").hasPrefix("12."))
            #expect(try await guest("cat /srv/kept.txt") == "kept\n")

            // The next release, then back: `rollback` returns to the root before it, serial and data as they were.
            let release = try await nimbus(["upgrade", "u", "--image", "debian:13", "--yes"])
            #expect(release.status == 0, "\(release.standardError)")
            #expect(try await guest("cat /etc/debian_version").hasPrefix("13."))
            #expect(try await guest("cat /srv/kept.txt") == "kept\n")
            #expect(try await guest("sudo cat /etc/ssh/ssh_host_ed25519_key.pub") == hostKey)
            let back = try await nimbus(["rollback", "u"])
            #expect(back.status == 0, "\(back.standardError)")
            #expect(try await guest("cat /etc/cloud/build.info").contains("serial: 20260210-0002"))
            #expect(try await guest("cat /etc/debian_version").hasPrefix("12."))
            #expect(try await guest("cat /srv/kept.txt") == "kept\n")
            #expect(try await guest("ip -4 -o addr show").contains(" \(address)/"))

            // A fleet file that names another image upgrades the instance at apply, once confirmed.
            let fleet = home.url.appending(path: "fleet.yaml")
            try Data("instances:\n  - name: u\n    image: debian:13\n    memory: 1G\n".utf8).write(to: fleet)
            let asked = try await nimbus(["apply", "-f", fleet.path])
            #expect(asked.status == NimbusError.Code.invalidArgument.exitStatus, "\(asked.standardError)")
            #expect(try await guest("cat /etc/debian_version").hasPrefix("12."))
            let applied = try await nimbus(["apply", "-f", fleet.path, "--yes"])
            #expect(applied.status == 0 && applied.standardOutput.contains("upgraded u"), "\(applied.standardError)")
            #expect(try await guest("cat /etc/debian_version").hasPrefix("13."))
            #expect(try await guest("cat /srv/kept.txt") == "kept\n")
            #expect(try await guest("ip -4 -o addr show").contains(" \(address)/"))
            #expect(try await nimbus(["apply", "-f", fleet.path]).standardOutput.contains("unchanged u"))

            // kill -9 of an upgrade (back to 12) while it stops the guest: the instance is on one root or the
            // other, and the next commands sort it out.
            let killed = Process()
            killed.executableURL = NimbusBinary.url
            killed.arguments = ["upgrade", "u", "--image", "debian:12", "--yes"]
            killed.environment = ProcessInfo.processInfo.environment.merging([
                "NIMBUS_HOME": home.url.path, "NIMBUS_MIRROR_DEBIAN": mirror.url.absoluteString,
            ]) { _, new in new }
            killed.standardOutput = FileHandle.nullDevice
            killed.standardError = FileHandle.nullDevice
            try killed.run()
            try await Task.sleep(for: .seconds(3))
            kill(killed.processIdentifier, SIGKILL)
            killed.waitUntilExit()
            #expect(try await nimbus(["recover", "u"]).status == 0)
            // Running: booting the root it is on, or still shutting down as the killed upgrade asked (`start`
            // says it is running); stopped once that shutdown is over, and then started.
            // The loop breaks: a `for ... where` clause is checked on every pass, and ran `exec` sixty times.
            for _ in 0..<60 {
                if try await nimbus(["exec", "u", "--", "true"]).status == 0 { break }
                let started = try await nimbus(["start", "u", "--timeout", "900"])
                #expect(
                    started.status == 0 || started.standardError.contains("u is running already"),
                    "\(started.standardError)")
                try await Task.sleep(for: .seconds(5))
            }
            let version = try await guest("cat /etc/debian_version")
            #expect(version.hasPrefix("12.") || version.hasPrefix("13."), "\(version)")
            #expect(try await guest("cat /srv/kept.txt") == "kept\n")

            // --prune drops the rollback point (if the killed upgrade left one), and says so when there is none.
            #expect(try await nimbus(["upgrade", "--prune", "u"]).status == 0)
            #expect(!(try await nimbus(["info", "u"])).standardOutput.contains("Rollback:"))
            let none = try await nimbus(["upgrade", "--prune", "u"])
            #expect(none.status == 0 && none.standardError.contains("u has no rollback point"), "\(none.standardError)")
        } catch {
            Issue.record(error)
        }
        _ = try? await nimbus(["delete", "--purge", "--all"])
        _ = try? await nimbus(["network", "delete", network])
        scene.remove()
    }

    @Test(
        "through libvirt: a data volume in the pool, one holder, a libvirt network; an upgrade to a newer serial, then to debian:13, makes a root volume of its own and keeps the host key, the data and the network address; rollback returns to the previous root and deletes the newer; a root that cannot boot rolls back; the next instance mounts the volume",
        .requires(.libvirt))
    func libvirt() async throws {
        let slot = try await GuestSlot(expectedSeconds: 1000)
        defer { withExtendedLifetime(slot) {} }
        let lease = try await LibvirtDaemon.lease()
        defer { lease.release() }
        let name = "ul-\(UUID().uuidString.prefix(4).lowercased())"
        let scene = try await Scene("nimbus-upgrade-libvirt", instance: name)
        let (nimbus, guest) = (scene.nimbus, scene.guest)
        /// The names in the pool's `vol-list` (its first column; a row's path names the volume again).
        func poolVolumeNames() async throws -> [String] {
            try await LibvirtDaemon.virsh(["vol-list", "nimbus"]).standardOutput.split(separator: "\n")
                .compactMap { $0.split(separator: " ").first.map(String.init) }
        }
        func poolVolumes() async throws -> [String] {
            try await poolVolumeNames().filter { $0.contains("nimbus-\(name)-") }
        }
        let network = "ul\(String(UUID().uuidString.prefix(4)).lowercased())"
        do {
            let made = try await nimbus(["network", "create", network, "--driver", "libvirt"])
            #expect(made.status == 0, "\(made.standardError)")
            let launched = try await nimbus([
                "launch", "debian:12", "--name", name, "--driver", "libvirt", "--memory", "1G", "--volume",
                "data:/srv:1G", "--network", network, "--timeout", "900",
            ])
            #expect(launched.status == 0, "\(launched.standardError)")
            let info = try await nimbus(["info", name, "--format", "json"])
            let infos = try JSONDecoder().decode([InstanceInfo].self, from: Data(info.standardOutput.utf8))
            let address = try #require(infos.first?.networks.first?.address, "\(info.standardOutput)")
            _ = try await guest("sudo touch /etc/lost.txt && echo kept | sudo tee /srv/kept.txt >/dev/null")
            #expect(try await poolVolumes().isEmpty == false)
            let placed = try await nimbus(["volume", "info", "data"])
            #expect(placed.standardOutput.contains("libvirt pool"), "\(placed.standardOutput)")
            // One holder at a time, in a pool too: refused before anything is made.
            let second = try await nimbus([
                "launch", "debian:12", "--name", "\(name)-b", "--driver", "libvirt", "--volume", "data:/data",
            ])
            #expect(second.status == NimbusError.Code.alreadyExists.exitStatus, "\(second.standardError)")
            #expect(second.standardError.contains("attached to \(name)"), "\(second.standardError)")
            let hostKey = try await guest("sudo cat /etc/ssh/ssh_host_ed25519_key.pub")
            func rootDisks() async throws -> Set<String> {
                Set(try await poolVolumes().filter { $0.contains("-disk") })
            }
            let launchRoot = try await rootDisks()

            // A newer serial of debian:12 upstream: the upgrade relaunches on it in a root volume of its own, the
            // launch's root staying in the pool as the rollback point.
            try await Prerequisites.publishDebianBuild(scene.mirror.url, codename: "bookworm", serial: "20260210-0002")
            #expect(try await nimbus(["image", "refresh"]).status == 0)
            let upgraded = try await nimbus(["upgrade", name, "--yes"])
            #expect(upgraded.status == 0, "\(upgraded.standardError)")
            #expect(try await guest("cat /etc/cloud/build.info").contains("serial: 20260210-0002"))
            #expect(try await nimbus(["exec", name, "--", "test", "-e", "/etc/lost.txt"]).status == 1)
            #expect(try await guest("sudo cat /etc/ssh/ssh_host_ed25519_key.pub") == hostKey)
            #expect(try await guest("cat /srv/kept.txt") == "kept\n")
            #expect(try await guest("ip -4 -o addr show").contains(" \(address)/"))
            let serialRoots = try await rootDisks()
            #expect(serialRoots.count == 2 && launchRoot.isSubset(of: serialRoots), "\(serialRoots)")
            let disksBefore = serialRoots.subtracting(launchRoot)

            // The next release: the serial's root becomes the rollback point, the launch's goes.
            let release = try await nimbus(["upgrade", name, "--image", "debian:13", "--yes"])
            #expect(release.status == 0, "\(release.standardError)")
            #expect(try await guest("cat /etc/debian_version").hasPrefix("13."))
            #expect(try await guest("sudo cat /etc/ssh/ssh_host_ed25519_key.pub") == hostKey)
            #expect(try await guest("cat /srv/kept.txt") == "kept\n")
            #expect(try await guest("ip -4 -o addr show").contains(" \(address)/"))
            let releaseDisks = try await rootDisks()
            #expect(releaseDisks.count == 2 && disksBefore.isSubset(of: releaseDisks), "\(releaseDisks)")

            // The pool volume grows while the instance is stopped; the filesystem follows at the next start.
            #expect(try await nimbus(["stop", name, "--timeout", "120"]).status == 0)
            let resized = try await nimbus(["volume", "resize", "data", "--size", "2G"])
            #expect(resized.status == 0, "\(resized.standardError)")
            // The libvirt network's dnsmasq dies meanwhile: the rollback's start brings the network back.
            for pid in LibvirtNetworkTests.dnsmasqProcesses(of: network) { kill(pid, SIGKILL) }
            let degraded = try await nimbus(["network", "info", network, "--format", "json"]).standardOutput
            #expect(degraded.contains("\"state\" : \"degraded\""), "\(degraded)")
            let back = try await nimbus(["rollback", name])
            #expect(back.status == 0, "\(back.standardError)")
            let active = try await nimbus(["network", "info", network, "--format", "json"]).standardOutput
            #expect(active.contains("\"state\" : \"active\""), "\(active)")
            #expect(try await guest("cat /etc/cloud/build.info").contains("serial: 20260210-0002"))
            #expect(try await guest("cat /etc/debian_version").hasPrefix("12."))
            #expect(try await rootDisks() == disksBefore)
            #expect(try await guest("cat /srv/kept.txt") == "kept\n")
            #expect(try await guest("ip -4 -o addr show").contains(" \(address)/"))
            let size = try await guest("df -B1M --output=size /srv | tail -1")
            #expect((Int(size.trimmingCharacters(in: .whitespacesAndNewlines)) ?? 0) > 1800, "\(size)")
            // One level: there is nothing further back.
            #expect(try await nimbus(["rollback", name]).status == NimbusError.Code.notFound.exitStatus)

            // A root that cannot boot (a blank disk) is given up, its pool volume too, and the instance is back.
            let blank = scene.home.url.appending(path: "blank.qcow2")
            try await ProgramRunner.run("qemu-img", ["create", "-q", "-f", "qcow2", blank.path, "2G"])
            let broken = try await nimbus([
                "upgrade", name, "--image", blank.absoluteString, "--yes", "--timeout", "60",
            ])
            #expect(broken.status == NimbusError.Code.guestSetup.exitStatus, "\(broken.standardError)")
            #expect(try await guest("cat /etc/cloud/build.info").contains("serial: 20260210-0002"))
            #expect(try await guest("cat /srv/kept.txt") == "kept\n")
            #expect(try await rootDisks() == disksBefore)

            // The volume stays in the pool after the instance, and the next libvirt instance mounts it.
            #expect(try await nimbus(["delete", "--purge", name]).status == 0)
            let next = try await nimbus([
                "launch", "debian:12", "--name", "\(name)-c", "--driver", "libvirt", "--memory", "1G", "--volume",
                "data:/data", "--timeout", "900",
            ])
            #expect(next.status == 0, "\(next.standardError)")
            let read = try await nimbus(["exec", "\(name)-c", "--", "cat", "/data/kept.txt"])
            #expect(read.standardOutput == "kept\n", "\(read.standardError)")
            #expect(try await nimbus(["delete", "--purge", "\(name)-c"]).status == 0)
            // QEMU instances cannot reach it there.
            let qemu = try await nimbus(["launch", "debian:12", "--name", "q", "--volume", "data:/srv"])
            #expect(qemu.status == NimbusError.Code.invalidArgument.exitStatus, "\(qemu.standardError)")
            // The pool is the host's: other runs' volumes may be in it, so this run's volume is named.
            let poolVolume = try #require(
                qemu.standardError.firstMatch(of: /nimbus-vol-data-[0-9a-f]+/).map { String($0.output) },
                "\(qemu.standardError)")
            #expect(try await poolVolumes().isEmpty, "the instance's volumes are gone")
            let deleted = try await nimbus(["volume", "delete", "data"])
            #expect(deleted.status == 0, "\(deleted.standardError)")
            let pool = try await LibvirtDaemon.virsh(["vol-list", "nimbus"]).standardOutput
            #expect(!pool.contains(poolVolume), "\(pool)")

            // `volume create --driver libvirt` makes the pool volume at once.
            // Counted, not named: other runs' `early` volumes may be in the pool.
            func earlyVolumes() async throws -> [String] {
                try await poolVolumeNames().filter { $0.hasPrefix("nimbus-vol-early-") }
            }
            let before = try await earlyVolumes()
            #expect(
                try await nimbus(["volume", "create", "early", "--size", "64M", "--driver", "libvirt"]).status == 0)
            let created = try await earlyVolumes()
            #expect(created.count == before.count + 1 && Set(before).isSubset(of: created), "\(created)")
            #expect(try await nimbus(["volume", "delete", "early"]).status == 0)
            #expect(try await earlyVolumes() == before)
        } catch {
            Issue.record(error)
        }
        _ = try? await nimbus(["delete", "--purge", "--all"])
        _ = try? await nimbus(["volume", "delete", "data"])
        _ = try? await nimbus(["volume", "delete", "early"])
        _ = try? await nimbus(["network", "delete", network])
        #expect(try await poolVolumes().isEmpty)
        scene.remove()
    }
}
