import ArgumentParser
import Foundation
import NimbusCommands
import NimbusCore
import NimbusSeed
import NimbusTestSupport
import Testing

/// `nimbus seed` through its parsed command (in process) and, for stdin and exit statuses, the built binary.
@Suite("nimbus seed")
struct SeedCommandTests {
    static let publicKey = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPA/lmdaI4jHKfq2Ev6ymPMA45fCDR2Jnn86VoLICWrB me@test\n"

    func withFolder(_ body: (URL) async throws -> Void) async throws {
        let directory = try TemporaryDirectory("seed-command")
        defer { directory.remove() }
        try await body(directory.url)
    }

    func write(_ text: String, _ name: String, in folder: URL) throws -> String {
        let url = folder.appending(path: name)
        try Data(text.utf8).write(to: url)
        return url.path
    }

    func run(_ arguments: [String]) async throws {
        let command = try #require(try NimbusCommand.parseAsRoot(["seed"] + arguments) as? SeedCommand)
        try await command.run()
    }

    @Test("cloud-localds form: OUTPUT USER-DATA META-DATA writes an ISO with those files")
    func positional() async throws {
        try await withFolder { folder in
            let userData = try write("#cloud-config\nhostname: web\n", "user-data", in: folder)
            let metaData = try write("instance-id: abc\n", "meta-data", in: folder)
            let output = folder.appending(path: "seed.iso").path
            try await run([output, userData, metaData])
            #expect(FileManager.default.fileExists(atPath: output))
            if Prerequisites.programs("isoinfo") {
                let listing = try ProgramRunnerSync.output(
                    "/usr/bin/isoinfo", ["-R", "-i", output, "-x", "/meta-data"])
                #expect(listing == "instance-id: abc\n")
            }
        }
    }

    @Test("flags alone build the user-data, with the key under --user")
    func flagsOnly() async throws {
        try await withFolder { folder in
            let key = try write(Self.publicKey, "id.pub", in: folder)
            let command = try #require(
                try NimbusCommand.parseAsRoot(
                    [
                        "seed", "--print", "--hostname", "web.example.test", "--user", "dev", "--ssh-key", key,
                        "--locale", "en_US.UTF-8", "--timezone", "Europe/Paris", "--mac", "52:54:00:12:34:56",
                    ]) as? SeedCommand)
            let output = try command.request.render()
            let text = output.printed
            #expect(text.contains("# ---- user-data ----\n#cloud-config\nhostname: web\nfqdn: web.example.test\n"))
            #expect(text.contains("- name: dev"))
            #expect(text.contains("AAAAIPA/lmdaI4jHKfq2Ev6ymPMA45fCDR2Jnn86VoLICWrB me@test"))
            #expect(text.contains("timezone: Europe/Paris"))
            #expect(text.contains("# ---- network-config ----\nversion: 2\n"))
            #expect(text.contains("macaddress: \"52:54:00:12:34:56\""))
        }
    }

    @Test("--format ignition writes the JSON")
    func ignition() async throws {
        try await withFolder { folder in
            let key = try write(Self.publicKey, "id.pub", in: folder)
            let output = folder.appending(path: "config.ign").path
            try await run(["--format", "ignition", output, "--hostname", "core-1", "--ssh-key", key])
            let json = String(decoding: try Data(contentsOf: URL(fileURLWithPath: output)), as: UTF8.self)
            // The lowest spec that expresses it: 3.0.0, which every Ignition 2.x reads.
            #expect(json.contains("\"version\" : \"3.0.0\""))
            #expect(json.contains("\"name\" : \"core\""))
        }
    }

    @Test(
        "each user error fails before anything is written, naming the problem",
        arguments: [
            (["#cloud-config\nhostname: [a]\n"], [String](), "`hostname` must be a string"),
            (["#cloud-config\nusers: web\n"], [], "`users` must be a list"),
            (["#cloud-config\nfoo: [\n"], [], "user-data:3:1: invalid YAML"),
            (["#cloud-config\n- a\n"], [], "must be a mapping"),
            (
                ["#cloud-config\nhostname: a\n"], ["--ssh-key", "/nonexistent/id.pub"],
                "/nonexistent/id.pub: no such file"
            ),
            (["#cloud-config\nhostname: a\n"], ["--hostname", "Web_1"], "host name \"Web_1\" is not valid"),
            (["#cloud-config\nhostname: a\n"], ["--user", "Root!"], "user name \"Root!\" is not valid"),
            (["#cloud-config\nhostname: a\n"], ["--network-config", "NETWORK"], "must be a YAML mapping"),
            (["#cloud-config\npackages: [jq]\n"], ["--format", "ignition"], "`packages` has no Ignition equivalent"),
            (["#cloud-config\nhostname: a\n"], ["--mac", "52:54:00"], "MAC address \"52:54:00\" is not six hex pairs"),
            (["#cloud-config\nhostname: a\n"], ["--timezone", "Europe / Paris"], "is not a tz database name"),
        ])
    func errors(files: [String], flags: [String], message: String) async throws {
        try await withFolder { folder in
            let userData = try write(files[0], "user-data", in: folder)
            let network = try write("- not a mapping\n", "network", in: folder)
            let output = folder.appending(path: "seed.iso").path
            let arguments = [output, userData] + flags.map { $0 == "NETWORK" ? network : $0 }
            await #expect {
                try await run(arguments)
            } throws: { error in
                guard let error = error as? NimbusError else { return false }
                return error.code == .invalidArgument && error.message.contains(message)
                    || error.code == .io && error.message.contains(message)
            }
            #expect(!FileManager.default.fileExists(atPath: output), "an output was left behind")
            let leftovers = try FileManager.default.contentsOfDirectory(atPath: folder.path).filter {
                $0.hasSuffix(".tmp")
            }
            #expect(leftovers.isEmpty)
        }
    }

    @Test("a private key passed as --ssh-key is refused")
    func privateKeyRefused() async throws {
        try await withFolder { folder in
            let key = try write(
                "-----BEGIN OPENSSH PRIVATE KEY-----\nabc\n-----END OPENSSH PRIVATE KEY-----\n", "id", in: folder)
            let output = folder.appending(path: "seed.iso").path
            await #expect {
                try await run([output, "--ssh-key", key])
            } throws: { error in
                (error as? NimbusError)?.message.contains("is a private key: pass the .pub file beside it") == true
            }
            #expect(!FileManager.default.fileExists(atPath: output))
        }
    }

    @Test(
        "argument mistakes are caught by validate()",
        arguments: [
            [String](), ["a.iso", "b", "c", "d"], ["--print", "a", "b", "c"], ["a.iso"],
        ])
    func validation(arguments: [String]) {
        #expect(throws: (any Error).self) { try NimbusCommand.parseAsRoot(["seed"] + arguments) }
    }

    @Test(
        "the built binary reads user-data from stdin and fails with a non-zero status on bad input",
        .enabled(if: FileManager.default.isExecutableFile(atPath: builtNimbus)))
    func binary() async throws {
        try await withFolder { folder in
            let output = folder.appending(path: "seed.iso").path
            let good = try ProgramRunnerSync.run(
                Self.binary, ["seed", output, "-"], input: "#cloud-config\nhostname: piped\n")
            #expect(good.status == 0, "\(good.output)")
            if Prerequisites.programs("isoinfo") {
                let userData = try ProgramRunnerSync.output(
                    "/usr/bin/isoinfo", ["-R", "-i", output, "-x", "/user-data"])
                #expect(userData.contains("hostname: piped"))
            }
            let bad = try ProgramRunnerSync.run(
                Self.binary, ["seed", output + "2", "-"], input: "#cloud-config\nhostname: [x]\n")
            #expect(bad.status != 0)
            #expect(bad.output.contains("<stdin>:2:11: `hostname` must be a string"))
            #expect(!FileManager.default.fileExists(atPath: output + "2"))
            // --verbose says which Ignition spec version the config declares, and why.
            let verbose = try ProgramRunnerSync.run(
                Self.binary, ["seed", "--format", "ignition", "--print", "--verbose", "--hostname", "v1"])
            #expect(verbose.status == 0, "\(verbose.output)")
            #expect(
                verbose.output.contains("ignition: spec 3.0.0: users, files, links and units need nothing newer"),
                "\(verbose.output)")
        }
    }

    static var binary: String { builtNimbus }
}

/// The debug binary `swift build` made, beside the sources.
let builtNimbus = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
    .deletingLastPathComponent().appending(path: ".build/debug/nimbus").path

/// Blocking process runs for these tests (short, local programs).
enum ProgramRunnerSync {
    static func run(_ path: String, _ arguments: [String], input: String? = nil) throws -> (
        status: Int32, output: String
    ) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: path)
        process.arguments = arguments
        let pipe = Pipe()
        let stdin = Pipe()
        process.standardOutput = pipe
        process.standardError = pipe
        process.standardInput = stdin
        try process.run()
        if let input { stdin.fileHandleForWriting.write(Data(input.utf8)) }
        try stdin.fileHandleForWriting.close()
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return (process.terminationStatus, String(decoding: data, as: UTF8.self))
    }

    static func output(_ path: String, _ arguments: [String]) throws -> String { try run(path, arguments).output }
}
