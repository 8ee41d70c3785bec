import Crypto
import Foundation
import NimbusCore

/// A digest an image must match: `sha256:<hex>` or `sha512:<hex>`.
public struct Checksum: Hashable, Sendable, Codable, CustomStringConvertible {
    /// The digest algorithms catalogs publish.
    public enum Algorithm: String, Sendable, Codable {
        case sha256, sha512

        var hexLength: Int { self == .sha256 ? 64 : 128 }
    }

    /// The digest algorithm.
    public let algorithm: Algorithm
    /// Lower-case hex.
    public let hex: String

    /// A digest from its algorithm and hex (any case).
    public init(_ algorithm: Algorithm, _ hex: String) {
        self.algorithm = algorithm
        self.hex = hex.lowercased()
    }

    /// Parses `sha256:<64 hex>` or `sha512:<128 hex>`; a bare 64-digit hex is taken as sha256.
    public init(parsing text: String) throws(NimbusError) {
        let parts = text.split(separator: ":", maxSplits: 1).map(String.init)
        let algorithm: Algorithm?
        let hex: String
        if parts.count == 2 {
            algorithm = Algorithm(rawValue: parts[0].lowercased())
            hex = parts[1]
        } else {
            algorithm = .sha256
            hex = text
        }
        guard let algorithm, hex.count == algorithm.hexLength, hex.allSatisfy(\.isHexDigit) else {
            throw NimbusError(
                .invalidArgument,
                "checksum \"\(text)\" is not valid: write sha256: followed by 64 hex digits (or sha512: and 128)")
        }
        self.init(algorithm, hex)
    }

    /// `sha256:<hex>`.
    public var description: String { "\(algorithm.rawValue):\(hex)" }

    /// The first 12 digits, for tables.
    public var short: String { String(hex.prefix(12)) }
}

/// Hashes bytes as they stream past: always SHA-256 (the cache key), and SHA-512 when a catalog
/// publishes that (Debian).
struct StreamingDigest {
    private var sha256 = SHA256()
    private var sha512: SHA512?

    init(sha512: Bool) {
        self.sha512 = sha512 ? SHA512() : nil
    }

    mutating func update(_ bytes: UnsafeRawBufferPointer) {
        sha256.update(bufferPointer: bytes)
        sha512?.update(bufferPointer: bytes)
    }

    func finalize() -> (sha256: String, sha512: String?) {
        (hex(sha256.finalize()), sha512.map { hex($0.finalize()) })
    }

    private func hex(_ digest: some Digest) -> String {
        digest.map { byte in
            let digits = Array("0123456789abcdef".utf8)
            return String(decoding: [digits[Int(byte >> 4)], digits[Int(byte & 0xF)]], as: UTF8.self)
        }.joined()
    }
}
