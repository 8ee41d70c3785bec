import Foundation
import NimbusSeed
import NimbusTestSupport
import Testing

@Suite(
    "SSH key pairs",
    .requires(.programs("ssh-keygen")))
struct SSHKeyPairTests {
    @Test("ssh-keygen -y reproduces the public line and -lf prints the same fingerprint")
    func matchesSSHKeygen() throws {
        try TemporaryDirectory.withSync { directory in
            let pair = SSHKeyPair(comment: "nimbus@test")
            let key = directory.url.appending(path: "id_ed25519")
            try pair.write(privateKeyTo: key)
            let mode = try FileManager.default.attributesOfItem(atPath: key.path)[.posixPermissions] as? Int
            #expect(mode == 0o600)
            let publicLine = try runProgram("/usr/bin/ssh-keygen", ["-y", "-f", key.path])
            #expect(publicLine.status == 0)
            #expect(publicLine.output.trimmingCharacters(in: .newlines) == pair.publicKeyLine)
            let fingerprint = try runProgram("/usr/bin/ssh-keygen", ["-l", "-f", key.path])
            #expect(fingerprint.output == "256 \(pair.fingerprint) nimbus@test (ED25519)\n")
            let fromPub = try runProgram("/usr/bin/ssh-keygen", ["-l", "-f", key.path + ".pub"])
            #expect(fromPub.output.contains(pair.fingerprint))
        }
    }

    @Test("a key written by ssh-keygen reads back, and ours round-trips")
    func readsBack() throws {
        try TemporaryDirectory.withSync { directory in
            let key = directory.url.appending(path: "theirs")
            #expect(
                try runProgram("/usr/bin/ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-C", "them", "-f", key.path])
                    .status == 0)
            let pair = try SSHKeyPair(openSSHPrivateKey: String(decoding: try Data(contentsOf: key), as: UTF8.self))
            let expected = String(decoding: try Data(contentsOf: key.appendingPathExtension("pub")), as: UTF8.self)
            #expect(pair.publicKeyLine == expected.trimmingCharacters(in: .newlines))
            let again = try SSHKeyPair(openSSHPrivateKey: pair.openSSHPrivateKey)
            #expect(again == pair)
        }
    }

    @Test("keys from a seed are deterministic")
    func deterministic() throws {
        let a = try SSHKeyPair(seed: [UInt8](repeating: 1, count: 32), comment: "x")
        let b = try SSHKeyPair(seed: [UInt8](repeating: 1, count: 32), comment: "x")
        #expect(a.openSSHPrivateKey == b.openSSHPrivateKey)
        #expect(throws: SeedError.self) { try SSHKeyPair(seed: [1, 2, 3]) }
    }

    @Test("encrypted, garbage and non-ed25519 private keys are clear errors")
    func invalidPrivateKeys() throws {
        try TemporaryDirectory.withSync { directory in
            let encrypted = directory.url.appending(path: "enc")
            _ = try runProgram("/usr/bin/ssh-keygen", ["-q", "-t", "ed25519", "-N", "secret", "-f", encrypted.path])
            #expect {
                try SSHKeyPair(openSSHPrivateKey: String(decoding: try Data(contentsOf: encrypted), as: UTF8.self))
            } throws: { error in
                (error as? SeedError)?.description.contains("encrypted") == true
            }
            let rsa = directory.url.appending(path: "rsa")
            _ = try runProgram("/usr/bin/ssh-keygen", ["-q", "-t", "rsa", "-b", "1024", "-N", "", "-f", rsa.path])
            #expect {
                try SSHKeyPair(openSSHPrivateKey: String(decoding: try Data(contentsOf: rsa), as: UTF8.self))
            } throws: { error in
                (error as? SeedError)?.description.contains("ssh-ed25519") == true
            }
            #expect(throws: SeedError.self) { try SSHKeyPair(openSSHPrivateKey: "hello") }
        }
    }

    @Test("public key lines are checked; a private key passed as --ssh-key is named")
    func publicKeyValidation() throws {
        let pair = SSHKeyPair(comment: "c")
        #expect(try SSHPublicKey.validate(pair.publicKeyLine + "\n", source: "k.pub") == pair.publicKeyLine)
        #expect {
            try SSHPublicKey.validate(pair.openSSHPrivateKey, source: "id_ed25519")
        } throws: { error in
            (error as? SeedError)?.description == "id_ed25519 is a private key: pass the .pub file beside it"
        }
        #expect(throws: SeedError.self) { try SSHPublicKey.validate("ssh-ed25519", source: "x") }
    }
}

extension TemporaryDirectory {
    static func withSync<T>(_ body: (TemporaryDirectory) throws -> T) throws -> T {
        let directory = try TemporaryDirectory("seed")
        defer { directory.remove() }
        return try body(directory)
    }
}
