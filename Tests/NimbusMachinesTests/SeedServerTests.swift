import Foundation
import NimbusCore
import NimbusMachines
import NimbusSeed
import NimbusTestSupport
import Testing

/// `SeedServer` against a real HTTP client (curl), the way cloud-init's NoCloud datasource reads it.
@Suite("Seed server")
struct SeedServerTests {
    static let seed: [SeedServer.File: [UInt8]] = [
        .metaData: Array("instance-id: iid-test\nlocal-hostname: seeded\n".utf8),
        .userData: Array("#cloud-config\nhostname: seeded\n".utf8),
        .vendorData: [],
        .networkConfig: Array("version: 2\n".utf8),
    ]

    /// curl's status code and body for `method` of `url`.
    func curl(_ url: String, method: String = "GET") async throws -> (status: Int, body: String) {
        var arguments = [
            "--silent", "--show-error", "--path-as-is", "--max-time", "20", "--write-out", "\n%{http_code}",
        ]
        arguments += method == "HEAD" ? ["--head"] : ["--request", method]
        let output = try await ProgramRunner.output("curl", arguments + [url])
        #expect(output.status == 0, "curl \(url): \(output.standardError)")
        var lines = output.standardOutput.components(separatedBy: "\n")
        let status = Int(lines.removeLast()) ?? 0
        return (status, lines.joined(separator: "\n"))
    }

    @Test("serves the four NoCloud files at the URL plus their names, as cloud-init appends them")
    func servesFiles() async throws {
        let server = try await SeedServer.start(files: Self.seed)
        defer { Task { await server.shutdown() } }
        #expect(server.hostURL == "http://127.0.0.1:\(server.port)/")
        #expect(server.guestURL == "http://10.0.2.2:\(server.port)/")
        for file in SeedServer.File.allCases {
            // cloud-init 22.4 (util.read_seeded): "%s%s%s" % (base, "meta-data", ext).
            let (status, body) = try await curl(server.hostURL + file.rawValue)
            #expect(status == 200, "\(file)")
            #expect(Array(body.utf8) == Self.seed[file], "\(file)")
        }
        #expect(await Self.fetched(by: server, becomes: Set(SeedServer.File.allCases)))
    }

    @Test("answers 404 for other paths and 405 for other methods; HEAD does not count as fetched")
    func refusals() async throws {
        let server = try await SeedServer.start(files: Self.seed)
        defer { Task { await server.shutdown() } }
        for path in ["", "meta-data/", "meta-data.txt", "../meta-data", "latest/meta-data", "user-data2"] {
            #expect(try await curl(server.hostURL + path).status == 404, "/\(path)")
        }
        #expect(try await curl(server.hostURL + "user-data", method: "POST").status == 405)
        let head = try await curl(server.hostURL + "user-data", method: "HEAD")
        #expect(head.status == 200)
        #expect(head.body.lowercased().contains("content-length: \(Self.seed[.userData]?.count ?? 0)"))
        #expect(server.fetched.isEmpty)
    }

    @Test("a file left out is a 404, not an empty answer")
    func absentFile() async throws {
        var files = Self.seed
        files[.networkConfig] = nil
        let server = try await SeedServer.start(files: files)
        defer { Task { await server.shutdown() } }
        #expect(try await curl(server.hostURL + "network-config").status == 404)
        #expect(server.fetched.isEmpty)
    }

    @Test("records which files were fetched, and waiting returns once meta-data, user-data and vendor-data were")
    func waitsForFetch() async throws {
        let server = try await SeedServer.start(files: Self.seed)
        defer { Task { await server.shutdown() } }
        _ = try await curl(server.hostURL + "meta-data")
        #expect(await Self.fetched(by: server, becomes: [.metaData]))
        let waiter = Task { try await server.waitUntilFetched(timeout: .seconds(600)) }
        _ = try await curl(server.hostURL + "user-data")
        #expect(await Self.fetched(by: server, becomes: [.metaData, .userData]))
        _ = try await curl(server.hostURL + "vendor-data")
        try await waiter.value
        #expect(server.fetched == SeedServer.fetchedByCloudInit)
        // Already fetched: returns at once.
        try await server.waitUntilFetched([.metaData], timeout: .seconds(600))
    }

    @Test("waiting past the deadline is an error naming what was not fetched")
    func waitTimesOut() async throws {
        let server = try await SeedServer.start(files: Self.seed)
        defer { Task { await server.shutdown() } }
        _ = try await curl(server.hostURL + "meta-data")
        let error = await #expect(throws: SeedServerError.self) {
            try await server.waitUntilFetched(timeout: .milliseconds(300))
        }
        #expect(
            error
                == .notFetched(
                    missing: [.userData, .vendorData], fetched: [.metaData], url: server.guestURL, clientGone: false))
        #expect(error.map { "\($0)" }?.contains("user-data, vendor-data not fetched from http://10.0.2.2:") == true)
    }

    @Test("waiting ends with an error when the client is gone (a stopped machine)")
    func waitEndsWhenClientGone() async throws {
        let server = try await SeedServer.start(files: Self.seed)
        defer { Task { await server.shutdown() } }
        let error = await #expect(throws: SeedServerError.self) {
            try await server.waitUntilFetched(timeout: .seconds(600)) { false }
        }
        #expect(
            error
                == .notFetched(
                    missing: [.metaData, .userData, .vendorData], fetched: [], url: server.guestURL, clientGone: true))
    }

    @Test("a cancelled wait ends at once")
    func waitCancelled() async throws {
        let server = try await SeedServer.start(files: Self.seed)
        defer { Task { await server.shutdown() } }
        let waiter = Task { try await server.waitUntilFetched(timeout: .seconds(600)) }
        waiter.cancel()
        await #expect(throws: CancellationError.self) { try await waiter.value }
    }

    @Test("serves a folder; meta-data and user-data are required, vendor-data is served empty when absent")
    func folder() async throws {
        let dir = try TemporaryDirectory("seed-server")
        defer { dir.remove() }
        try Data("instance-id: iid-folder\n".utf8).write(to: dir.url.appending(path: "meta-data"))
        let missing = await #expect(throws: SeedServerError.self) { try await SeedServer.start(folder: dir.url) }
        #expect(missing == .missingFile(folder: dir.url.path, file: .userData))

        try Data("#cloud-config\n".utf8).write(to: dir.url.appending(path: "user-data"))
        let server = try await SeedServer.start(folder: dir.url)
        defer { Task { await server.shutdown() } }
        #expect(try await curl(server.hostURL + "meta-data").body == "instance-id: iid-folder\n")
        let vendor = try await curl(server.hostURL + "vendor-data")
        #expect(vendor.status == 200 && vendor.body.isEmpty)
        #expect(try await curl(server.hostURL + "network-config").status == 404)
    }

    /// Whether the server's record of fetched files becomes `expected` within 5 s: a file counts once its
    /// response is written in full, which the server learns a moment after curl may have read it all.
    static func fetched(by server: SeedServer, becomes expected: Set<SeedServer.File>) async -> Bool {
        let deadline = ContinuousClock.now + .seconds(5)
        while server.fetched != expected, ContinuousClock.now < deadline {
            try? await Task.sleep(for: .milliseconds(10))
        }
        return server.fetched == expected
    }

    @Test("after shutdown the port refuses connections")
    func shutdown() async throws {
        let server = try await SeedServer.start(files: Self.seed)
        await server.shutdown()
        let output = try await ProgramRunner.output(
            "curl", ["--silent", "--max-time", "5", server.hostURL + "meta-data"])
        // Nothing serves the seed there any more. Usually nothing listens at all (curl's 7), but tests running
        // at once pick free ports too: a QEMU's user-mode forward that took the port since accepts and resets
        // (56), which says the same about this server.
        #expect(output.status != 0, "\(output.status)")
        #expect(!output.standardOutput.contains("instance-id"))
    }
}
