import Foundation
import NimbusCore
import NimbusTestSupport
import Testing

@testable import NimbusLibvirt

/// The libvirt driver's host check for `doctor`, that libvirt's QEMU user can open /dev/kvm, against a real character device with the
/// KVM numbers made in a temporary folder (so the host's /dev/kvm, which other tests use, is never touched),
/// and a real account: `nobody`, whose only group is `nogroup` on Debian.
@Suite("doctor: /dev/kvm for libvirt's QEMU user")
struct LibvirtKVMAccessTests {
    @Test(
        "root-only is a warning naming the fix; group or other read-write, or the user's own device, is fine",
        .requires(.root, .programs("mknod")))
    func kvmAccess() async throws {
        try await TemporaryDirectory.with { dir in
            let device = dir.url.appending(path: "kvm").path
            try await ProgramRunner.run("mknod", ["-m", "0600", device, "c", "10", "232"])
            let nogroup = try #require(getgrnam("nogroup")).pointee.gr_gid
            let nobody = try #require(getpwnam("nobody")).pointee.pw_uid

            let closed = try #require(LibvirtDriver.kvmAccess(device: device, user: "nobody"))
            #expect(!closed.ok && closed.warning)
            #expect(closed.detail.contains("nobody"), "\(closed.detail)")
            #expect(closed.detail.contains("mode 600"), "\(closed.detail)")
            #expect(closed.detail.contains("chgrp kvm \(device) && chmod 0660 \(device)"), "\(closed.detail)")

            // Group read-only is not enough: QEMU opens /dev/kvm read-write.
            #expect(chown(device, 0, nogroup) == 0)
            #expect(chmod(device, 0o640) == 0)
            #expect(LibvirtDriver.kvmAccess(device: device, user: "nobody")?.ok == false)
            #expect(chmod(device, 0o660) == 0)
            #expect(LibvirtDriver.kvmAccess(device: device, user: "nobody")?.ok == true)

            #expect(chown(device, 0, 0) == 0)
            #expect(chmod(device, 0o606) == 0)
            #expect(LibvirtDriver.kvmAccess(device: device, user: "nobody")?.ok == true)

            // The owner's bits count for the owner, whatever the others may do.
            #expect(chown(device, nobody, 0) == 0)
            #expect(chmod(device, 0o066) == 0)
            #expect(LibvirtDriver.kvmAccess(device: device, user: "nobody")?.ok == false)

            // No such device or no such user: nothing to say.
            #expect(LibvirtDriver.kvmAccess(device: device + "-missing", user: "nobody") == nil)
            #expect(LibvirtDriver.kvmAccess(device: device, user: "no-such-user-here") == nil)
        }
    }
}
