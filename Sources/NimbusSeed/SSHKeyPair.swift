import Crypto
import Foundation

/// An ed25519 SSH key pair, made and written natively (no ssh-keygen): guest host keys injected through
/// cloud-init's `ssh_keys`, and the installation's own user key.
///
/// The private key is written in OpenSSH's `openssh-key-v1` format, unencrypted (PROTOCOL.key in the
/// OpenSSH sources); the public key as the one-line `ssh-ed25519 AAAA... comment` of authorized_keys
/// (RFC 8709 for the key blob); the fingerprint as `ssh-keygen -lf` prints it (`SHA256:` and unpadded
/// base64 of the SHA-256 of the blob).
public struct SSHKeyPair: Sendable, Equatable {
    /// The 32-byte private seed.
    public let privateKey: Curve25519.Signing.PrivateKey
    /// Written after the key: in the public line and inside the private key file.
    public var comment: String

    public static func == (a: SSHKeyPair, b: SSHKeyPair) -> Bool {
        a.privateKey.rawRepresentation == b.privateKey.rawRepresentation && a.comment == b.comment
    }

    /// A new random key pair.
    public init(comment: String = "") {
        self.init(privateKey: Curve25519.Signing.PrivateKey(), comment: comment)
    }

    /// The key pair of an existing private key.
    public init(privateKey: Curve25519.Signing.PrivateKey, comment: String = "") {
        self.privateKey = privateKey
        self.comment = comment
    }

    /// The key pair whose 32-byte private seed is `seed` (RFC 8032), for fixtures and derived keys.
    public init(seed: [UInt8], comment: String = "") throws(SeedError) {
        do {
            self.init(privateKey: try Curve25519.Signing.PrivateKey(rawRepresentation: seed), comment: comment)
        } catch {
            throw .invalidKey("an ed25519 seed is 32 bytes, not \(seed.count)")
        }
    }

    /// Reads an unencrypted `openssh-key-v1` ed25519 private key, as written by `openSSHPrivateKey` or
    /// `ssh-keygen -t ed25519 -N ''`.
    public init(openSSHPrivateKey text: String) throws(SeedError) {
        let body = text.split(whereSeparator: \.isNewline)
            .filter { !$0.hasPrefix("-----") }
            .joined()
        guard text.contains("-----BEGIN OPENSSH PRIVATE KEY-----"), let data = Data(base64Encoded: body) else {
            throw .invalidKey("not an OpenSSH private key (expected -----BEGIN OPENSSH PRIVATE KEY-----)")
        }
        var reader = SSHReader(Array(data))
        guard reader.take(Self.magic.count) == Self.magic else { throw .invalidKey("missing openssh-key-v1 magic") }
        guard let cipher = reader.string(), let kdf = reader.string(), reader.string() != nil,
            let count = reader.uint32(), reader.string() != nil, let secrets = reader.string()
        else { throw .invalidKey("truncated key") }
        guard cipher == Array("none".utf8), kdf == Array("none".utf8) else {
            throw .invalidKey("the key is encrypted: decrypt it with `ssh-keygen -p -N '' -f FILE` first")
        }
        guard count == 1 else { throw .invalidKey("the file holds \(count) keys, expected 1") }
        var inner = SSHReader(secrets)
        guard let check1 = inner.uint32(), let check2 = inner.uint32(), check1 == check2 else {
            throw .invalidKey("check integers differ (wrong passphrase or corrupt file)")
        }
        guard let type = inner.string(), type == Array("ssh-ed25519".utf8) else {
            throw .invalidKey("only ssh-ed25519 keys are supported")
        }
        guard inner.string() != nil, let secret = inner.string(), secret.count == 64, let comment = inner.string()
        else {
            throw .invalidKey("malformed ed25519 private key")
        }
        do {
            privateKey = try Curve25519.Signing.PrivateKey(rawRepresentation: secret.prefix(32))
        } catch {
            throw .invalidKey("malformed ed25519 private key")
        }
        guard Array(privateKey.publicKey.rawRepresentation) == Array(secret.suffix(32)) else {
            throw .invalidKey("the public half does not match the private key")
        }
        self.comment = String(decoding: comment, as: UTF8.self)
    }

    static let magic = Array("openssh-key-v1".utf8) + [0]

    /// The public key blob: `string "ssh-ed25519"`, `string key`.
    public var publicKeyBlob: [UInt8] {
        var blob: [UInt8] = []
        blob.appendSSHString(Array("ssh-ed25519".utf8))
        blob.appendSSHString(Array(privateKey.publicKey.rawRepresentation))
        return blob
    }

    /// `ssh-ed25519 AAAA... comment`, without a newline, for authorized_keys and `ssh_keys`.
    public var publicKeyLine: String {
        let line = "ssh-ed25519 " + Data(publicKeyBlob).base64EncodedString()
        return comment.isEmpty ? line : line + " " + comment
    }

    /// `SHA256:...` as `ssh-keygen -lf` and `ssh -v` show it.
    public var fingerprint: String {
        let digest = Data(SHA256.hash(data: publicKeyBlob)).base64EncodedString()
        return "SHA256:" + digest.replacingOccurrences(of: "=", with: "")
    }

    /// The private key file: PEM-armoured `openssh-key-v1`, unencrypted, lines of 70 characters, ending in
    /// a newline. Deterministic for a given key and comment (the check integers come from the key).
    public var openSSHPrivateKey: String {
        let publicKey = Array(privateKey.publicKey.rawRepresentation)
        let check = Array(SHA256.hash(data: privateKey.rawRepresentation)).prefix(4)
        var secrets: [UInt8] = Array(check) + Array(check)
        secrets.appendSSHString(Array("ssh-ed25519".utf8))
        secrets.appendSSHString(publicKey)
        secrets.appendSSHString(Array(privateKey.rawRepresentation) + publicKey)
        secrets.appendSSHString(Array(comment.utf8))
        var pad: UInt8 = 1
        while secrets.count % 8 != 0 {
            secrets.append(pad)
            pad += 1
        }
        var file = Self.magic
        file.appendSSHString(Array("none".utf8))
        file.appendSSHString(Array("none".utf8))
        file.appendSSHString([])
        file.appendUInt32(1)
        file.appendSSHString(publicKeyBlob)
        file.appendSSHString(secrets)
        let encoded = Data(file).base64EncodedString()
        var lines: [Substring] = []
        var rest = Substring(encoded)
        while !rest.isEmpty {
            lines.append(rest.prefix(70))
            rest = rest.dropFirst(70)
        }
        return "-----BEGIN OPENSSH PRIVATE KEY-----\n" + lines.joined(separator: "\n")
            + "\n-----END OPENSSH PRIVATE KEY-----\n"
    }

    /// Writes `path` (mode 0600) and `path.pub` (0644); nothing is left half-written.
    public func write(privateKeyTo url: URL) throws(SeedError) {
        do {
            try SeedFiles.writeAtomically(Data(openSSHPrivateKey.utf8), to: url, permissions: 0o600)
            try SeedFiles.writeAtomically(
                Data((publicKeyLine + "\n").utf8), to: url.appendingPathExtension("pub"), permissions: 0o644)
        } catch {
            throw .io(path: url.path, reason: String(describing: error))
        }
    }
}

/// Validates one authorized_keys line well enough to catch a private key or a typo passed as `--ssh-key`.
public enum SSHPublicKey {
    static let types = [
        "ssh-ed25519", "ssh-rsa", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521",
        "sk-ssh-ed25519@openssh.com", "sk-ecdsa-sha2-nistp256@openssh.com", "ssh-dss",
    ]

    /// The trimmed line when it looks like `TYPE BASE64 [comment]`, else an error naming `source`.
    public static func validate(_ line: String, source: String) throws(SeedError) -> String {
        let trimmed = line.trimmingCharacters(in: .whitespacesAndNewlines)
        let fields = trimmed.split(separator: " ", maxSplits: 2)
        guard fields.count >= 2, types.contains(String(fields[0])), Data(base64Encoded: String(fields[1])) != nil else {
            if trimmed.contains("PRIVATE KEY") {
                throw .invalidKey("\(source) is a private key: pass the .pub file beside it")
            }
            throw .invalidKey("\(source) is not an SSH public key (expected a line like `ssh-ed25519 AAAA... comment`)")
        }
        return trimmed
    }
}

struct SSHReader {
    let bytes: [UInt8]
    var position = 0

    init(_ bytes: [UInt8]) { self.bytes = bytes }

    mutating func take(_ count: Int) -> [UInt8]? {
        guard count >= 0, position + count <= bytes.count else { return nil }
        defer { position += count }
        return Array(bytes[position..<(position + count)])
    }

    mutating func uint32() -> UInt32? {
        guard let b = take(4) else { return nil }
        return UInt32(b[0]) << 24 | UInt32(b[1]) << 16 | UInt32(b[2]) << 8 | UInt32(b[3])
    }

    mutating func string() -> [UInt8]? {
        guard let length = uint32() else { return nil }
        return take(Int(length))
    }
}

extension [UInt8] {
    mutating func appendUInt32(_ value: UInt32) {
        append(contentsOf: [
            UInt8(value >> 24), UInt8((value >> 16) & 0xFF), UInt8((value >> 8) & 0xFF), UInt8(value & 0xFF),
        ])
    }

    mutating func appendSSHString(_ bytes: [UInt8]) {
        appendUInt32(UInt32(bytes.count))
        append(contentsOf: bytes)
    }
}
