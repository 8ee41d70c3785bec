import Foundation
import NimbusCore
import NimbusInstances
import NimbusTestSupport
import Testing

/// Capture and export with the real Debian cloud guest, through the `nimbus` binary as users run it (issue
/// 18): an instance customised by its cloud-config is captured (with the vagrant user); the image, exported as
/// an OVA, boots from its VMDK with a config drive, and, exported for Hyper-V, from its VHDX with an OVF
/// environment, each a new machine (new machine-id, new host keys) with the customisation, cloud-init naming
/// the datasource; the Vagrant box is added with the real `vagrant box add` and brought up by vagrant-libvirt.
@Suite("Capture and export with guests", .serialized, .requires(.guest))
struct CaptureGuestTests {
    @Test(
        "capture --vagrant: the OVA's VMDK boots with a config drive, the VHDX with an OVF environment, each a new machine with the customisation; the box comes up under vagrant-libvirt"
    )
    func captureAndBootExports() async throws {
        let slot = try await GuestSlot(expectedSeconds: 900)
        defer { withExtendedLifetime(slot) {} }
        let home = try TemporaryDirectory.guestHome("nimbus-capture")
        let image = "file://" + (Prerequisites.guestImage?.path ?? "/missing-guest-image")
        func nimbus(_ arguments: [String]) async throws -> ProgramOutput {
            let result = try await NimbusBinary.run(arguments, home: home.url)
            print("    nimbus \(arguments.joined(separator: " ")) -> \(result.status)")
            return result
        }
        /// `command` in `instance` through `sh -c`, expected to succeed; its stdout, trimmed.
        func guest(_ instance: String, _ command: String) async throws -> String {
            let result = try await nimbus(["exec", instance, "--", "sh", "-c", command])
            #expect(result.status == 0, "\(instance): \(command): \(result.standardError)")
            return result.standardOutput.trimmingCharacters(in: .whitespacesAndNewlines)
        }
        let hostKey = "sudo cat /etc/ssh/ssh_host_ed25519_key.pub"
        let userData = home.url.appending(path: "user-data")
        try Data(
            "#cloud-config\nwrite_files:\n  - path: /etc/nimbus-captured\n    content: customised\n".utf8
        ).write(to: userData)
        let out = home.url.appending(path: "out")
        try FileManager.default.createDirectory(at: out, withIntermediateDirectories: true)
        do {
            let launched = try await nimbus([
                "launch", image, "--name", "cap", "--memory", "1G", "--timeout", "900", "--cloud-init", userData.path,
            ])
            #expect(launched.status == 0, "\(launched.standardError)")
            let machineID = try await guest("cap", "cat /etc/machine-id")
            let key = try await guest("cap", hostKey)

            // A catalog's name is refused before the guest is touched.
            let taken = try await nimbus(["image", "capture", "cap", "debian:12"])
            #expect(taken.status == NimbusError.Code.invalidArgument.exitStatus, "\(taken.standardError)")
            #expect(taken.standardError.contains("names a catalog image"), "\(taken.standardError)")
            #expect(try await guest("cap", "cat /etc/nimbus-captured") == "customised")

            let captured = try await nimbus(["image", "capture", "cap", "golden", "--vagrant", "--format", "json"])
            #expect(captured.status == 0, "\(captured.standardError)")
            #expect(captured.standardOutput.contains("\"vagrantUser\" : true"), "\(captured.standardOutput)")
            #expect(!(try await nimbus(["list"])).standardOutput.contains("cap "), "the instance is deleted")

            // VMware: the OVA's disk, booted with a config drive.
            let ova = out.appending(path: "golden.ova")
            let exported = try await nimbus(["image", "export", "golden", "--target", "vmware", "-o", ova.path])
            #expect(exported.status == 0, "\(exported.standardError)")
            try await ProgramRunner.run("tar", ["-xf", ova.path, "-C", out.path, "golden-disk1.vmdk"])
            let vmdk = out.appending(path: "golden-disk1.vmdk")
            let fromVMDK = try await nimbus([
                "launch", vmdk.absoluteString, "--name", "vm", "--memory", "1G", "--timeout", "900", "--seed-format",
                "configdrive",
            ])
            #expect(fromVMDK.status == 0, "\(fromVMDK.standardError)")
            #expect(try await guest("vm", "cat /etc/nimbus-captured") == "customised")
            #expect(try await guest("vm", "cat /etc/machine-id") != machineID)
            #expect(try await guest("vm", hostKey) != key)
            let vmStatus = try await guest("vm", "sudo cloud-init status --long")
            #expect(vmStatus.contains("DataSourceConfigDrive"), "\(vmStatus)")
            #expect(try await nimbus(["delete", "--purge", "vm"]).status == 0)

            // Hyper-V: the VHDX, booted with an OVF environment.
            let vhdx = out.appending(path: "golden.vhdx")
            #expect(try await nimbus(["image", "export", "golden", "--target", "hyperv", "-o", vhdx.path]).status == 0)
            let fromVHDX = try await nimbus([
                "launch", vhdx.absoluteString, "--name", "hv", "--memory", "1G", "--timeout", "900", "--seed-format",
                "ovf",
            ])
            #expect(fromVHDX.status == 0, "\(fromVHDX.standardError)")
            #expect(try await guest("hv", "cat /etc/nimbus-captured") == "customised")
            #expect(try await guest("hv", "cat /etc/machine-id") != machineID)
            let hvStatus = try await guest("hv", "sudo cloud-init status --long")
            #expect(hvStatus.contains("DataSourceOVF"), "\(hvStatus)")
            #expect(try await nimbus(["delete", "--purge", "hv"]).status == 0)

            // Vagrant: the box, added and brought up by the real vagrant with vagrant-libvirt.
            let box = out.appending(path: "golden.box")
            #expect(try await nimbus(["image", "export", "golden", "--target", "vagrant", "-o", box.path]).status == 0)
            try await Self.vagrantUp(box: box, in: home.url.appending(path: "vagrant"))
        } catch {
            Issue.record(error)
        }
        _ = try? await nimbus(["delete", "--purge", "--all"])
        home.remove()
    }

    /// `vagrant box add`, `vagrant up --provider=libvirt`, `vagrant ssh -c hostname`, `vagrant destroy`, each
    /// as a user runs them, in `folder` with a Vagrantfile of the box's and a VAGRANT_HOME of its own.
    static func vagrantUp(box: URL, in folder: URL) async throws {
        let lease = try await LibvirtDaemon.lease()
        defer { lease.release() }
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        let suffix = String(UUID().uuidString.prefix(6)).lowercased()
        // vagrant-libvirt keeps the box's disk in a storage pool; one of the test's own, removed after.
        let pool = "nimbus-vagrant-\(suffix)"
        let poolPath = folder.appending(path: "pool")
        try FileManager.default.createDirectory(at: poolPath, withIntermediateDirectories: true)
        _ = try await LibvirtDaemon.virsh(["pool-create-as", pool, "dir", "--target", poolPath.path])
        let network = "nimbus-vg-\(suffix)"
        try Data(
            """
            Vagrant.configure("2") do |config|
              config.vm.box = "nimbus-golden-\(suffix)"
              config.vm.boot_timeout = 900
              config.vm.synced_folder ".", "/vagrant", disabled: true
              config.vm.provider :libvirt do |libvirt|
                libvirt.uri = "qemu:///system"
                libvirt.driver = "qemu"
                libvirt.cpu_mode = "custom"
                libvirt.cpu_model = "qemu64"
                libvirt.memory = 1024
                libvirt.graphics_type = "none"
                libvirt.storage_pool_name = "\(pool)"
                libvirt.management_network_name = "\(network)"
                libvirt.management_network_address = "192.168.\(Int.random(in: 180...220)).0/24"
              end
            end

            """.utf8
        ).write(to: folder.appending(path: "Vagrantfile"))
        let environment = [
            "VAGRANT_HOME": folder.appending(path: "home").path, "VAGRANT_DEFAULT_PROVIDER": "libvirt",
            "VAGRANT_CHECKPOINT_DISABLE": "1",
        ]
        func vagrant(_ arguments: [String]) async throws -> ProgramOutput {
            let result = try await ProgramRunner.output(
                "vagrant", arguments, environment: environment, workingDirectory: folder)
            print("    vagrant \(arguments.joined(separator: " ")) -> \(result.status)")
            return result
        }
        do {
            let added = try await vagrant(["box", "add", "--name", "nimbus-golden-\(suffix)", box.path])
            #expect(added.status == 0, "\(added.standardOutput)\(added.standardError)")
            let up = try await vagrant(["up", "--provider=libvirt"])
            #expect(up.status == 0, "\(up.standardOutput.suffix(3000))\(up.standardError)")
            let hostname = try await vagrant(["ssh", "-c", "hostname && id -un"])
            #expect(
                hostname.status == 0 && hostname.standardOutput.contains("vagrant"),
                "\(hostname.standardOutput)\(hostname.standardError)")
        } catch {
            Issue.record(error)
        }
        let destroyed = try await vagrant(["destroy", "--force"])
        #expect(destroyed.status == 0, "\(destroyed.standardOutput)\(destroyed.standardError)")
        _ = try? await vagrant(["box", "remove", "--force", "nimbus-golden-\(suffix)"])
        _ = try? await LibvirtDaemon.virsh(["net-destroy", network])
        _ = try? await LibvirtDaemon.virsh(["net-undefine", network])
        // The box's image uploaded to the pool goes with the pool.
        for volume in (try? await LibvirtDaemon.virsh(["vol-list", pool]).standardOutput.split(separator: "\n")) ?? [] {
            if let name = volume.split(separator: " ").first, name.hasSuffix(".img") {
                _ = try? await LibvirtDaemon.virsh(["vol-delete", String(name), "--pool", pool])
            }
        }
        _ = try? await LibvirtDaemon.virsh(["pool-destroy", pool])
    }
}
