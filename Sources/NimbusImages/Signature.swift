import Foundation
import NimbusCore

/// Checks OpenPGP cleartext-signed metadata (simplestreams `.sjson`) with `gpgv` against one keyring.
///
/// What is returned is gpgv's own `--output`: the signed text with the armour and dash-escaping removed,
/// so the JSON parsed afterwards is exactly what the signature covers.
enum SignatureVerifier {
    static func verify(_ signed: Data, keyring: URL, what: String) async throws(NimbusError) -> Data {
        let gpgv = try ProgramRunner.require("gpgv", package: "gpgv")
        let folder = FileManager.default.temporaryDirectory.appending(path: "nimbus-gpgv-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: folder) }
        let input = folder.appending(path: "input.sjson")
        let output = folder.appending(path: "output.json")
        do {
            try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
            try signed.write(to: input)
        } catch {
            throw NimbusError(.io, "could not write \(input.path) for signature checking", cause: ErrorText(error))
        }
        // An empty --homedir keeps the user's own trustedkeys.kbx out of the decision.
        let result = try await ProgramRunner.output(
            gpgv, ["--homedir", folder.path, "--keyring", keyring.path, "--output", output.path, input.path])
        guard result.status == 0, let verified = try? Data(contentsOf: output) else {
            let reason = result.standardError.split(separator: "\n").filter { $0.hasPrefix("gpgv:") }
                .map { $0.dropFirst(6) }.joined(separator: "; ")
            throw NimbusError(
                .integrity,
                "the \(what) is not validly signed by a key in \(keyring.path) (\(reason)): it was refused; check "
                    + "the mirror, or the keyring if you configured one",
                cause: SignatureFailure(status: result.status, standardError: result.standardError))
        }
        return verified
    }
}

/// gpgv's verdict on a signature it did not accept, with its own words.
struct SignatureFailure: Error, Sendable, CustomStringConvertible {
    let status: Int32
    let standardError: String

    var description: String { "gpgv exited with status \(status): \(standardError)" }
}
