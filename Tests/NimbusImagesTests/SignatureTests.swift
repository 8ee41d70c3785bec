import Foundation
import NimbusCore
import NimbusTestSupport
import Testing

@testable import NimbusImages

/// A signing key made for the test in its own GNUPGHOME, exported to a keyring file for gpgv.
struct TestSigner {
    let home: URL
    let keyring: URL

    static func make(in folder: URL, name: String) async throws -> TestSigner {
        let home = folder.appending(path: "gnupg-\(name)")
        try FileManager.default.createDirectory(at: home, withIntermediateDirectories: true)
        try FileManager.default.setAttributes([.posixPermissions: 0o700], ofItemAtPath: home.path)
        try await ProgramRunner.run(
            "gpg",
            [
                "--homedir", home.path, "--batch", "--passphrase", "", "--quick-gen-key",
                "Nimbus Test \(name) <\(name)@nimbus.invalid>", "ed25519", "sign", "never",
            ])
        let keyring = folder.appending(path: "\(name)-keyring.gpg")
        try await ProgramRunner.run("gpg", ["--homedir", home.path, "--batch", "--output", keyring.path, "--export"])
        return TestSigner(home: home, keyring: keyring)
    }

    func clearsign(_ data: Data, in folder: URL) async throws -> Data {
        let input = folder.appending(path: "to-sign-\(UUID().uuidString)")
        let output = input.appendingPathExtension("asc")
        try data.write(to: input)
        try await ProgramRunner.run(
            "gpg",
            [
                "--homedir", home.path, "--batch", "--yes", "--pinentry-mode", "loopback", "--passphrase", "",
                "--digest-algo", "SHA512", "--output", output.path, "--clearsign", input.path,
            ])
        return try Data(contentsOf: output)
    }

    /// Runs `body` with fresh signers named `names`, then stops their gpg-agents whatever happened.
    static func with(_ names: [String], in folder: URL, _ body: ([TestSigner]) async throws -> Void) async throws {
        var signers: [TestSigner] = []
        do {
            for name in names { signers.append(try await make(in: folder, name: name)) }
            try await body(signers)
        } catch {
            for signer in signers { await signer.stop() }
            throw error
        }
        for signer in signers { await signer.stop() }
    }

    func stop() async {
        _ = try? await ProgramRunner.output("gpgconf", ["--homedir", home.path, "--kill", "gpg-agent"])
    }
}

@Suite(
    "Signed simplestreams metadata",
    .requires(.programs("gpg", "gpgv", "gpgconf", "qemu-img")))
struct SignatureTests {
    static let productsJSON = "releases/streams/v1/com.ubuntu.cloud:released:download.json"
    static let productsSJSON = "releases/streams/v1/com.ubuntu.cloud:released:download.sjson"

    /// Serves index.sjson and the products .sjson signed by `signer` (the unsigned .json stay too).
    func signTree(_ server: MirrorServer, _ signer: TestSigner, _ dir: URL) async throws {
        for (json, sjson) in [
            ("releases/streams/v1/index.json", "releases/streams/v1/index.sjson"),
            (Self.productsJSON, Self.productsSJSON),
        ] {
            let body = try #require(server.file(json))
            server.put(sjson, try await signer.clearsign(body, in: dir))
        }
    }

    @Test("cleartext-signed index and products verify with gpgv against the keyring and resolve")
    func goodSignature() async throws {
        let server = try await MirrorServer.start()
        try await TemporaryDirectory.with { dir in
            try Fixtures.ubuntuTree(on: server, images: Fixtures.standardUbuntu, image: Data("img".utf8))
            try await TestSigner.with(["good"], in: dir.url) { signers in
                let signer = signers[0]
                try await signTree(server, signer, dir.url)
                let store = try Fixtures.store(dir, server: server, keyring: .file(signer.keyring))
                let remote = try await store.resolve(
                    .catalog(.ubuntu, release: "24.04", stream: "released"), arch: .amd64)
                #expect(remote.version == "20240423.1")
                #expect(server.requests(Self.productsSJSON).count == 1)
                #expect(server.requests(Self.productsJSON).isEmpty)
            }
        }
        await server.stop()
    }

    @Test("with a keyring, tampered, unsigned and foreign-signed metadata are refused")
    func badSignatures() async throws {
        let server = try await MirrorServer.start()
        try await TemporaryDirectory.with { dir in
            try Fixtures.ubuntuTree(on: server, images: Fixtures.standardUbuntu, image: Data("img".utf8))
            try await TestSigner.with(["good", "stranger"], in: dir.url) { signers in
                let (signer, stranger) = (signers[0], signers[1])
                try await signTree(server, signer, dir.url)

                // Tampered: one sha256 digit changed inside the signed text.
                let signed = String(decoding: try #require(server.file(Self.productsSJSON)), as: UTF8.self)
                let tampered = signed.replacingOccurrences(of: "\"20240423.1\"", with: "\"20240423.9\"")
                #expect(tampered != signed)
                server.put(Self.productsSJSON, tampered)
                let store = try Fixtures.store(dir, server: server, keyring: .file(signer.keyring))
                let bad = await #expect(throws: NimbusError.self) {
                    try await store.resolve(.catalog(.ubuntu, release: "24.04", stream: "released"), arch: .amd64)
                }
                #expect(bad?.code == .integrity)
                #expect(bad?.message.contains("is not validly signed by a key in \(signer.keyring.path)") == true)
                #expect(bad?.message.contains("BAD signature") == true)

                // Unsigned: plain JSON where the signed file should be.
                server.put(Self.productsSJSON, try #require(server.file(Self.productsJSON)))
                let unsigned = await #expect(throws: NimbusError.self) {
                    try await Fixtures.store(dir, server: server, keyring: .file(signer.keyring), refresh: true)
                        .resolve(.catalog(.ubuntu, release: "24.04", stream: "released"), arch: .amd64)
                }
                #expect(unsigned?.message.contains("is not validly signed") == true)

                // Signed, but by a key that is not in the keyring.
                try await signTree(server, stranger, dir.url)
                let foreign = await #expect(throws: NimbusError.self) {
                    try await Fixtures.store(dir, server: server, keyring: .file(signer.keyring), refresh: true)
                        .resolve(.catalog(.ubuntu, release: "24.04", stream: "released"), arch: .amd64)
                }
                #expect(foreign?.message.contains("is not validly signed") == true)
                #expect(
                    foreign?.message.contains("public key") == true
                        || foreign?.message.contains("No public key") == true)
            }
        }
        await server.stop()
    }

    @Test(
        "NIMBUS_UBUNTU_KEYRING selects the keyring; without any keyring the unsigned .json is read with one warning",
        .enabled(if: !FileManager.default.fileExists(atPath: "/usr/share/keyrings/ubuntu-cloudimage-keyring.gpg")))
    func automaticKeyring() async throws {
        let server = try await MirrorServer.start()
        try await TemporaryDirectory.with { dir in
            try Fixtures.ubuntuTree(on: server, images: Fixtures.standardUbuntu, image: Data("img".utf8))
            try await TestSigner.with(["env"], in: dir.url) { signers in
                let signer = signers[0]
                try await signTree(server, signer, dir.url)
                let base = server.base
                let mirrors = Mirrors(ubuntu: base, debian: base, fedoraCoreOS: base)
                var options = ImageStore.Options()
                options.keyring = .automatic
                let log = WarningLog()
                options.warn = { log.append($0) }
                let signed = try ImageStore(
                    paths: dir.paths, mirrors: mirrors, options: options,
                    environment: ["NIMBUS_UBUNTU_KEYRING": signer.keyring.path])
                _ = try await signed.resolve(.catalog(.ubuntu, release: "24.04", stream: "released"), arch: .amd64)
                #expect(server.requests(Self.productsSJSON).count == 1)
                #expect(log.all.isEmpty)

                let unsigned = try ImageStore(paths: dir.paths, mirrors: mirrors, options: options, environment: [:])
                _ = try await unsigned.resolve(.catalog(.ubuntu, release: "24.04", stream: "released"), arch: .amd64)
                _ = try await unsigned.resolve(.catalog(.ubuntu, release: "22.04", stream: "released"), arch: .amd64)
                #expect(server.requests(Self.productsJSON).count == 1)
                #expect(log.all.filter { $0.contains("signatures were not checked") }.count == 1)
            }
        }
        await server.stop()
    }
}
