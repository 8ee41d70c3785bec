import Foundation
import NimbusCore

/// Fedora CoreOS stream metadata: `<mirror>/streams/<stream>.json` → `architectures.<x86_64|aarch64>
/// .artifacts.qemu` → `release` and `formats["qcow2.xz"].disk` with `location`, `sha256` (of the .xz)
/// and `uncompressed-sha256`.
struct FedoraCoreOS: Sendable {
    struct Stream: Decodable {
        var stream: String?
        var architectures: [String: Arch]?
    }

    struct Arch: Decodable {
        var artifacts: [String: Artifact]?
    }

    struct Artifact: Decodable {
        var release: String?
        var formats: [String: [String: Disk]]?
    }

    struct Disk: Decodable {
        var location: String?
        var sha256: String?
        var uncompressedSHA256: String?

        enum CodingKeys: String, CodingKey {
            case location, sha256
            case uncompressedSHA256 = "uncompressed-sha256"
        }
    }

    let mirror: URL
    let metadata: MetadataCache

    func resolve(stream: String, arch: Architecture) async throws(NimbusError) -> RemoteImage {
        let url = mirror.appending(path: "streams/\(stream).json")
        let data = try await metadata.fetch(url, what: "Fedora CoreOS \(stream) stream metadata")
        let parsed: Stream
        do {
            parsed = try JSONDecoder().decode(Stream.self, from: data)
        } catch {
            throw malformed("\(url.absoluteString) is not stream metadata JSON (\(error))")
        }
        guard let architectures = parsed.architectures else {
            throw malformed("\(url.absoluteString) has no architectures")
        }
        guard let entry = architectures[arch.coreOSName] else {
            let available = architectures.keys.sorted().joined(separator: ", ")
            throw NimbusError(
                .notFound,
                "Fedora CoreOS \(stream) has no \(arch.coreOSName) images (it has: \(available)): pick another --arch")
        }
        let at = "\(url.absoluteString) → architectures.\(arch.coreOSName).artifacts.qemu"
        guard let qemu = entry.artifacts?["qemu"] else { throw malformed("\(at) is missing") }
        guard let disk = qemu.formats?["qcow2.xz"]?["disk"] else {
            throw malformed("\(at).formats[\"qcow2.xz\"].disk is missing")
        }
        guard let location = disk.location, let published = URL(string: location) else {
            throw malformed("\(at).formats[\"qcow2.xz\"].disk.location is missing")
        }
        guard let hex = disk.sha256, let checksum = try? Checksum(parsing: "sha256:\(hex)") else {
            throw malformed("\(at).formats[\"qcow2.xz\"].disk.sha256 is missing or invalid")
        }
        return RemoteImage(
            reference: "fedora-coreos:\(stream)", distribution: .fedoraCoreOS, release: stream, codename: nil,
            version: qemu.release, arch: arch, url: rebase(published), size: nil, checksum: checksum,
            compression: .xz, uncompressedSHA256: disk.uncompressedSHA256?.lowercased())
    }

    /// Locations are absolute URLs on the official host; with a mirror configured, the same path is
    /// fetched from the mirror.
    func rebase(_ url: URL) -> URL {
        let official = Mirrors.official.fedoraCoreOS
        guard mirror != official, url.host == official.host else { return url }
        let path = url.path.hasPrefix("/") ? String(url.path.dropFirst()) : url.path
        return mirror.appending(path: path)
    }

    private func malformed(_ text: String) -> NimbusError {
        NimbusError(.integrity, "malformed metadata: \(text)", cause: MalformedMetadata(description: text))
    }
}
