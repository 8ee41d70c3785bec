import Foundation
import NimbusISO9660
import NimbusTestSupport
import Testing

/// The files of a typical NoCloud seed, and a fixed date, so images are reproducible.
enum SeedFixture {
    static let date = Date(timeIntervalSince1970: 1_767_225_600)  // 2026-01-01T00:00:00Z
    static let files: [ISO9660Image.File] = [
        .init(name: "user-data", contents: Array("#cloud-config\nhostname: web\n".utf8)),
        .init(name: "meta-data", contents: Array("instance-id: iid-web-1\nlocal-hostname: web\n".utf8)),
        .init(name: "vendor-data", contents: Array("#cloud-config\ngrowpart: {mode: auto}\n".utf8)),
        .init(name: "network-config", contents: Array("version: 2\nethernets: {}\n".utf8)),
    ]
    static var image: ISO9660Image { ISO9660Image(volumeIdentifier: "cidata", timestamp: date, files: files) }
}

/// Runs a program and returns its stdout, failing the test on a non-zero exit.
func run(_ program: String, _ arguments: [String]) throws -> String {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: program)
    process.arguments = arguments
    let output = Pipe()
    let error = Pipe()
    process.standardOutput = output
    process.standardError = error
    try process.run()
    let data = output.fileHandleForReading.readDataToEndOfFile()
    let errorText = String(decoding: error.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
    process.waitUntilExit()
    #expect(process.terminationStatus == 0, "\(program) \(arguments) failed: \(errorText)")
    return String(decoding: data, as: UTF8.self)
}

func runBytes(_ program: String, _ arguments: [String]) throws -> [UInt8] {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: program)
    process.arguments = arguments
    let output = Pipe()
    process.standardOutput = output
    process.standardError = FileHandle.nullDevice
    try process.run()
    let data = output.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    return Array(data)
}

@Suite("ISO 9660 images")
struct ISO9660ImageTests {
    @Test("the same files and timestamp give identical bytes, whatever the input order")
    func deterministic() throws {
        let a = try SeedFixture.image.bytes()
        let b = try ISO9660Image(
            volumeIdentifier: "cidata", timestamp: SeedFixture.date, files: SeedFixture.files.reversed()
        ).bytes()
        let same = a == b
        #expect(same)
        #expect(a.count % 2048 == 0)
    }

    @Test(
        "a timestamp beyond the years the format holds, or not a number, is clamped, not a trap (found by bench/fuzz)",
        arguments: [1e300, -1e300, Double.nan, Date.distantFuture.timeIntervalSince1970])
    func extremeTimestamps(seconds: Double) throws {
        let image = ISO9660Image(
            timestamp: Date(timeIntervalSince1970: seconds),
            files: [.init(name: "meta-data", contents: Array("x".utf8))])
        #expect(try image.bytes().count % 2048 == 0)
    }

    @Test("the image matches the golden bytes in Resources/seed.iso")
    func golden() throws {
        let url = try #require(Bundle.module.url(forResource: "Resources/seed", withExtension: "iso"))
        let golden = try [UInt8](Data(contentsOf: url))
        let bytes = try SeedFixture.image.bytes()
        if ProcessInfo.processInfo.environment["NIMBUS_UPDATE_GOLDEN"] == "1" {
            try Data(bytes).write(
                to: URL(fileURLWithPath: #filePath).deletingLastPathComponent().appending(path: "Resources/seed.iso"))
        }
        let firstDifference = zip(bytes, golden).enumerated().first { $0.element.0 != $0.element.1 }?.offset
        #expect(
            bytes.count == golden.count && firstDifference == nil,
            "\(bytes.count) bytes against \(golden.count), first difference at \(String(describing: firstDifference))")
    }

    @Test("writing to a file gives the same bytes as building in memory")
    func writeMatchesBytes() throws {
        let directory = try TemporaryDirectory("iso")
        defer { directory.remove() }
        let source = directory.url.appending(path: "payload")
        try Data(repeating: 0x5A, count: 5000).write(to: source)
        var files = SeedFixture.files
        files.append(.init(name: "payload.bin", contentsOf: source))
        let image = ISO9660Image(volumeIdentifier: "cidata", timestamp: SeedFixture.date, files: files)
        let output = directory.url.appending(path: "out.iso")
        try image.write(to: output)
        let same = try [UInt8](Data(contentsOf: output)) == image.bytes()
        #expect(same)
    }

    @Test("a file over 4 GiB - 1 is a clear error, and no image is left behind")
    func tooLarge() throws {
        let directory = try TemporaryDirectory("iso")
        defer { directory.remove() }
        let big = directory.url.appending(path: "big")
        #expect(FileManager.default.createFile(atPath: big.path, contents: nil))
        let handle = try FileHandle(forWritingTo: big)
        try handle.truncate(atOffset: ISO9660Image.maximumFileSize + 1)  // sparse: takes no space
        try handle.close()
        let image = ISO9660Image(timestamp: SeedFixture.date, files: [.init(name: "disk.img", contentsOf: big)])
        let output = directory.url.appending(path: "out.iso")
        #expect(throws: ISO9660Error.fileTooLarge(name: "disk.img", size: ISO9660Image.maximumFileSize + 1)) {
            try image.write(to: output)
        }
        #expect(!FileManager.default.fileExists(atPath: output.path))
        let message = ISO9660Error.fileTooLarge(name: "disk.img", size: ISO9660Image.maximumFileSize + 1).description
        #expect(message.contains("disk.img") && message.contains("4 GiB - 1"))
    }

    @Test(
        "bad names, duplicates and volume identifiers are rejected",
        arguments: [
            ("", "empty"), ("a//b", "'/'"), ("..", "reserved"), (String(repeating: "x", count: 65), "64"),
        ])
    func invalidNames(name: String, reason: String) {
        let image = ISO9660Image(timestamp: SeedFixture.date, files: [.init(name: name, contents: [])])
        #expect {
            try image.bytes()
        } throws: { error in
            guard case .invalidName(_, let why) = error as? ISO9660Error else { return false }
            return why.contains(reason)
        }
    }

    @Test("duplicate names and long volume identifiers are rejected")
    func duplicates() {
        let twice = ISO9660Image(
            timestamp: SeedFixture.date, files: [.init(name: "a", contents: []), .init(name: "a", contents: [1])])
        #expect(throws: ISO9660Error.duplicateName("a")) { try twice.bytes() }
        let long = ISO9660Image(
            volumeIdentifier: String(repeating: "v", count: 33), timestamp: SeedFixture.date, files: [])
        #expect(throws: ISO9660Error.invalidVolumeIdentifier(String(repeating: "v", count: 33))) { try long.bytes() }
    }
}

@Suite(
    "ISO 9660 images read by isoinfo, xorriso and blkid",
    .requires(.programs("isoinfo", "xorriso", "blkid")))
struct ISO9660ToolTests {
    let directory: TemporaryDirectory
    let iso: URL

    init() throws {
        directory = try TemporaryDirectory("iso-tools")
        iso = directory.url.appending(path: "seed.iso")
        var files = SeedFixture.files
        // Names that collide once shortened to 8.3, an empty file, and one spanning several sectors.
        files += [
            .init(name: "network-config-2", contents: Array("x".utf8)),
            .init(name: "empty", contents: []),
            .init(
                name: "big.tar.gz", contents: (0..<10_000).map { UInt8(truncatingIfNeeded: $0 &* 7) },
                permissions: 0o600),
        ]
        try ISO9660Image(volumeIdentifier: "cidata", timestamp: SeedFixture.date, files: files).write(to: iso)
    }

    @Test("isoinfo -d sees the cidata volume with Rock Ridge and Joliet")
    func describe() throws {
        defer { directory.remove() }
        let text = try run("/usr/bin/isoinfo", ["-d", "-i", iso.path])
        #expect(text.contains("Volume id: cidata"))
        #expect(text.contains("Logical block size is: 2048"))
        #expect(text.contains("Joliet with UCS level 3 found"))
        #expect(text.contains("Rock Ridge signatures version 1 found"))
    }

    @Test("isoinfo -R -l and -J -l list the real names")
    func listings() throws {
        defer { directory.remove() }
        let rockRidge = try run("/usr/bin/isoinfo", ["-R", "-l", "-i", iso.path])
        let joliet = try run("/usr/bin/isoinfo", ["-J", "-l", "-i", iso.path])
        for name in [
            "user-data", "meta-data", "vendor-data", "network-config", "network-config-2", "empty", "big.tar.gz",
        ] {
            #expect(rockRidge.contains(" \(name) ") || rockRidge.contains(" \(name)\n"), "Rock Ridge lacks \(name)")
            #expect(joliet.contains(" \(name) ") || joliet.contains(" \(name)\n"), "Joliet lacks \(name)")
        }
        #expect(rockRidge.contains("-rw-r--r--"))
        #expect(rockRidge.contains("-rw-------"))
        #expect(rockRidge.contains("2026"))
    }

    @Test("isoinfo -R -x extracts every file byte for byte")
    func extraction() throws {
        defer { directory.remove() }
        let big = (0..<10_000).map { UInt8(truncatingIfNeeded: $0 &* 7) }
        #expect(try runBytes("/usr/bin/isoinfo", ["-R", "-i", iso.path, "-x", "/big.tar.gz"]) == big)
        #expect(try runBytes("/usr/bin/isoinfo", ["-R", "-i", iso.path, "-x", "/empty"]) == [])
        for file in SeedFixture.files {
            guard case .bytes(let bytes) = file.contents else { continue }
            #expect(try runBytes("/usr/bin/isoinfo", ["-R", "-i", iso.path, "-x", "/\(file.name)"]) == bytes)
            #expect(try runBytes("/usr/bin/isoinfo", ["-J", "-i", iso.path, "-x", "/\(file.name)"]) == bytes)
        }
    }

    @Test("xorriso finds every file and reports no problem")
    func xorriso() throws {
        defer { directory.remove() }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/xorriso")
        process.arguments = ["-abort_on", "WARNING", "-indev", iso.path, "-find", "/", "-exec", "lsdl"]
        let output = Pipe()
        process.standardOutput = output
        process.standardError = output
        try process.run()
        let text = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        #expect(process.terminationStatus == 0, "\(text)")
        for name in ["'/user-data'", "'/meta-data'", "'/vendor-data'", "'/network-config'", "'/big.tar.gz'"] {
            #expect(text.contains(name), "\(text)")
        }
        #expect(!text.contains("WARNING") && !text.contains("FAILURE"), "\(text)")
    }

    @Test("blkid sees LABEL=cidata TYPE=iso9660")
    func blkid() throws {
        defer { directory.remove() }
        let text = try run("/usr/sbin/blkid", ["-p", "-o", "export", iso.path])
        #expect(text.contains("LABEL=cidata"))
        #expect(text.contains("TYPE=iso9660"))
    }
}
