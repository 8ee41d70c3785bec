import Foundation
import NimbusCore

/// Debian's official cloud images: `<mirror>/<codename>/latest/` holds `debian-<N>-genericcloud-<arch>.qcow2`
/// and a `SHA512SUMS` file in coreutils format (`<hex>  <name>` per line).
struct DebianCloud: Sendable {
    let mirror: URL
    let metadata: MetadataCache

    func resolve(release: String, arch: Architecture) async throws(NimbusError) -> RemoteImage {
        guard
            let known = ImageReference.debianReleases.first(where: { $0.version == release || $0.codename == release })
        else {
            let list = ImageReference.debianReleases.map { "\($0.version) (\($0.codename))" }.joined(separator: ", ")
            throw NimbusError(.notFound, "Debian release \"\(release)\" is not known: use one of \(list)")
        }
        let folder = mirror.appending(path: "\(known.codename)/latest/")
        let sumsURL = folder.appending(path: "SHA512SUMS")
        let sums = try await metadata.fetch(sumsURL, what: "Debian \(known.codename) checksum list")
        let name = "debian-\(known.version)-genericcloud-\(arch).qcow2"
        let text = String(decoding: sums, as: UTF8.self)
        var found: Checksum?
        for line in text.split(whereSeparator: \.isNewline) {
            let fields = line.split(separator: " ", maxSplits: 1)
            guard fields.count == 2 else { continue }
            // coreutils marks binary mode with a leading '*' on the name.
            let file = fields[1].trimmingCharacters(in: .whitespaces).trimmingCharacters(
                in: CharacterSet(charactersIn: "*"))
            if file == name {
                guard let checksum = try? Checksum(parsing: "sha512:\(fields[0])") else {
                    throw NimbusError(
                        .integrity,
                        "malformed metadata: the SHA512SUMS line for \(name) in \(sumsURL.absoluteString) has no valid sha512"
                    )
                }
                found = checksum
            }
        }
        guard let found else {
            throw NimbusError(
                .notFound,
                "Debian \(known.version) has no \(arch) genericcloud image: \(sumsURL.absoluteString) does not list \(name)"
            )
        }
        return RemoteImage(
            reference: "debian:\(known.version)", distribution: .debian, release: known.version,
            codename: known.codename, version: "latest", arch: arch, url: folder.appending(path: name), size: nil,
            checksum: found)
    }
}
