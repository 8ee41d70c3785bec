import Foundation
import NimbusCore

/// An image as OpenStack's Glance takes it: the disk and container formats, the smallest root disk, and the
/// image properties that Nova's scheduler and libvirt driver read, limited to what Nimbus knows of the
/// image (https://docs.openstack.org/glance/latest/admin/useful-image-properties.html).
struct GlanceImage: Encodable {
    var name: String
    var diskFormat = "qcow2"
    var containerFormat = "bare"
    /// The root disk the flavor must give, in GiB: the image's virtual size rounded up.
    var minDisk: UInt64
    var properties: [String: String]

    enum CodingKeys: String, CodingKey {
        case name, properties
        case diskFormat = "disk_format"
        case containerFormat = "container_format"
        case minDisk = "min_disk"
    }

    init(image: CachedImage, name: String, uefi: Bool) {
        self.name = name
        minDisk = (image.virtualSize + (1 << 30) - 1) >> 30
        var properties = [
            "architecture": (image.arch ?? .host) == .arm64 ? "aarch64" : "x86_64",
            "hw_disk_bus": "virtio",
            "hw_firmware_type": uefi ? "uefi" : "bios",
        ]
        // os_distro takes libosinfo's short names; Fedora CoreOS is "fedora" there.
        switch image.distribution {
        case .ubuntu: properties["os_distro"] = "ubuntu"
        case .debian: properties["os_distro"] = "debian"
        case .fedoraCoreOS: properties["os_distro"] = "fedora"
        case nil: break
        }
        if let release = image.release, image.distribution != .fedoraCoreOS { properties["os_version"] = release }
        // Only a capture asked the guest whether its agent is installed.
        if let agent = image.capture?.guestAgent { properties["hw_qemu_guest_agent"] = agent ? "yes" : "no" }
        self.properties = properties
    }

    func json() throws(NimbusError) -> Data {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        do {
            return try encoder.encode(self) + Data("\n".utf8)
        } catch {
            throw NimbusError(.io, "cannot encode the Glance properties", cause: error)
        }
    }

    /// `openstack image create` with these values, for the disk at `file`.
    func command(file: String) -> [String] {
        [
            "openstack", "image", "create", "--disk-format", diskFormat, "--container-format", containerFormat,
            "--min-disk", String(minDisk), "--file", file,
        ]
            + properties.keys.sorted().flatMap { ["--property", "\($0)=\(properties[$0] ?? "")"] } + [name]
    }
}
