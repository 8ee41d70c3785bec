import Foundation
import NimbusISO9660
import NimbusTestSupport
import Testing

/// An OpenStack config drive v2: the files cloud-init's ConfigDrive datasource reads, under
/// `openstack/latest/`.
enum ConfigDriveFixture {
    static let files: [ISO9660Image.File] = [
        .init(
            name: "openstack/latest/meta_data.json",
            contents: Array(#"{"uuid": "3c2c7e9a-1f4e-4b53-9d1e-0a6f7d2b8c11", "hostname": "web"}"#.utf8)),
        .init(name: "openstack/latest/user_data", contents: Array("#cloud-config\nhostname: web\n".utf8)),
        .init(name: "openstack/latest/vendor_data.json", contents: Array(##"{"cloud-init": "#cloud-config\n"}"##.utf8)),
        .init(
            name: "openstack/latest/network_data.json",
            contents: Array(#"{"links": [], "networks": [], "services": []}"#.utf8)),
    ]
    static var image: ISO9660Image {
        ISO9660Image(volumeIdentifier: "config-2", timestamp: SeedFixture.date, files: files)
    }
    static let listing: Set<String> = [
        "/openstack", "/openstack/latest", "/openstack/latest/meta_data.json", "/openstack/latest/user_data",
        "/openstack/latest/vendor_data.json", "/openstack/latest/network_data.json",
    ]

    /// A larger tree for comparison with genisoimage: a config drive with older versions and `ec2/`, names
    /// that sort apart in ISO 9660 and Joliet (`Zeta`, `alpha`), the deepest path allowed (8 components), a
    /// directory of several sectors, and enough directories for path tables of several sectors. No two names
    /// of a directory collide once shortened to level 1 (genisoimage makes them unique its own way).
    static let referenceFiles: [ISO9660Image.File] = {
        var files = ConfigDriveFixture.files
        files += [
            "openstack/2012-08-10/meta_data.json", "openstack/content/0000", "ec2/latest/meta-data.json",
            "ec2/2009-04-04/meta-data.json", "Zeta/x/file", "alpha/y/file", "1/2/3/4/5/6/7/deep.txt",
        ].map { ISO9660Image.File(name: $0, contents: Array("\($0)\n".utf8)) }
        files += (0..<100).map { .init(name: "tables/dir00000/f-\(1000 + $0).txt", contents: [UInt8($0)]) }
        files += (0..<140).map {
            .init(name: "tables/dir\(10000 + $0)/a-long-name-for-the-joliet-path-table/f", contents: [])
        }
        return files
    }()

    /// Writes `files` as a tree under `folder`, for genisoimage.
    static func materialize(_ files: [ISO9660Image.File], in folder: URL) throws {
        for file in files {
            guard case .bytes(let bytes) = file.contents else { continue }
            let url = folder.appending(path: file.name)
            try FileManager.default.createDirectory(
                at: url.deletingLastPathComponent(), withIntermediateDirectories: true)
            try Data(bytes).write(to: url)
        }
    }
}

/// Runs a program found on PATH or in sbin, with `environment` (`NAME=value`) added: its exit status and its
/// output, stdout and stderr together.
func runCombined(_ program: String, _ arguments: [String], environment: [String] = []) throws -> (
    status: Int32, output: String
) {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin"
    process.arguments = ["PATH=\(path):/usr/sbin:/sbin"] + environment + [program] + arguments
    let output = Pipe()
    process.standardOutput = output
    process.standardError = output
    process.standardInput = FileHandle.nullDevice
    try process.run()
    let data = output.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    return (process.terminationStatus, String(decoding: data, as: UTF8.self))
}

/// The four path tables of an image (ISO L, ISO M, Joliet L, Joliet M) as read from its volume descriptors
/// (ECMA-119 8.4.14-8.4.17, 9.4): each record's identifier, extent and parent number.
func pathTables(_ image: [UInt8]) -> [[(identifier: [UInt8], extent: UInt32, parent: UInt16)]] {
    func number(_ bytes: ArraySlice<UInt8>, bigEndian: Bool) -> UInt32 {
        let ordered = bigEndian ? Array(bytes) : bytes.reversed()
        return ordered.reduce(0) { $0 << 8 | UInt32($1) }
    }
    var tables: [[(identifier: [UInt8], extent: UInt32, parent: UInt16)]] = []
    for descriptor in [16, 17] {
        let base = descriptor * 2048
        let size = Int(number(image[(base + 132)..<(base + 136)], bigEndian: false))
        let l = Int(number(image[(base + 140)..<(base + 144)], bigEndian: false))
        let m = Int(number(image[(base + 148)..<(base + 152)], bigEndian: true))
        for (sector, bigEndian) in [(l, false), (m, true)] {
            var records: [(identifier: [UInt8], extent: UInt32, parent: UInt16)] = []
            var offset = sector * 2048
            while offset < sector * 2048 + size {
                let length = Int(image[offset])
                records.append(
                    (
                        Array(image[(offset + 8)..<(offset + 8 + length)]),
                        number(image[(offset + 2)..<(offset + 6)], bigEndian: bigEndian),
                        UInt16(number(image[(offset + 6)..<(offset + 8)], bigEndian: bigEndian))
                    ))
                offset += 8 + length + length % 2
            }
            tables.append(records)
        }
    }
    return tables
}

@Suite("Nested directories")
struct NestedDirectoryTests {
    @Test("a config drive is deterministic, whatever the input order, and the root-only seed is unchanged")
    func deterministic() throws {
        let a = try ConfigDriveFixture.image.bytes()
        let b = try ISO9660Image(
            volumeIdentifier: "config-2", timestamp: SeedFixture.date, files: ConfigDriveFixture.files.reversed()
        ).bytes()
        let same = a == b
        #expect(same)
        #expect(a.count % 2048 == 0)
    }

    @Test(
        "bad paths are rejected, naming the component",
        arguments: [
            ("/openstack/latest/user_data", "leading, trailing or doubled '/'"),
            ("openstack/latest/", "leading, trailing or doubled '/'"),
            ("openstack//latest/user_data", "leading, trailing or doubled '/'"),
            ("openstack/./user_data", "its component \".\" is reserved for directories"),
            ("openstack/../user_data", "its component \"..\" is reserved for directories"),
            ("openstack/latest/..", "its component \"..\" is reserved for directories"),
            ("openstack/lat\0est/user_data", "NUL"),
            ("\(String(repeating: "d", count: 65))/user_data", "Joliet allows at most 64 UTF-16 units"),
            ("\(String(repeating: "€", count: 43))/user_data", "128 UTF-8 bytes"),
            ("a\u{1F600}/user_data", "Basic Multilingual Plane"),
        ])
    func invalidPaths(path: String, reason: String) {
        let image = ISO9660Image(timestamp: SeedFixture.date, files: [.init(name: path, contents: [])])
        #expect {
            try image.bytes()
        } throws: { error in
            guard case .invalidName(let name, let why) = error as? ISO9660Error else { return false }
            return name == path && why.contains(reason)
        }
    }

    @Test("a path of 8 components is written; one of 9 is too deep for ISO 9660 (ECMA-119 6.8.2.1)")
    func depth() throws {
        let eight = "1/2/3/4/5/6/7/f"
        #expect(throws: Never.self) {
            try ISO9660Image(timestamp: SeedFixture.date, files: [.init(name: eight, contents: [])]).bytes()
        }
        let nine = "1/2/3/4/5/6/7/8/f"
        #expect(throws: ISO9660Error.pathTooDeep(nine, components: 9)) {
            try ISO9660Image(timestamp: SeedFixture.date, files: [.init(name: nine, contents: [])]).bytes()
        }
        let message = ISO9660Error.pathTooDeep(nine, components: 9).description
        #expect(message.contains(nine) && message.contains("9 components") && message.contains("8"), "\(message)")
    }

    @Test(
        "a file whose path is also a directory of other files is rejected, in either order",
        arguments: [["openstack", "openstack/latest/user_data"], ["openstack/latest/user_data", "openstack/latest"]])
    func fileAndDirectory(paths: [String]) {
        let image = ISO9660Image(
            timestamp: SeedFixture.date, files: paths.map { .init(name: $0, contents: []) })
        let conflict = paths.min { $0.count < $1.count }!
        #expect(throws: ISO9660Error.fileAndDirectory(conflict)) { try image.bytes() }
        #expect(ISO9660Error.fileAndDirectory(conflict).description.contains("\"\(conflict)\" is a file and also"))
    }

    @Test("duplicate paths are rejected")
    func duplicatePaths() {
        let image = ISO9660Image(
            timestamp: SeedFixture.date,
            files: [
                .init(name: "openstack/latest/user_data", contents: []),
                .init(name: "openstack/latest/user_data", contents: [1]),
            ])
        #expect(throws: ISO9660Error.duplicateName("openstack/latest/user_data")) { try image.bytes() }
    }

    @Test("more directories than a path table can number (65535) is a clear error")
    func tooManyDirectories() {
        // 65535 directories under the root, the root making 65536.
        let files = (0..<65535).map { ISO9660Image.File(name: "\($0)/f", contents: []) }
        let image = ISO9660Image(timestamp: SeedFixture.date, files: files)
        #expect(throws: ISO9660Error.tooManyDirectories(65536)) { try image.bytes() }
        #expect(ISO9660Error.tooManyDirectories(65536).description.contains("65535"))
    }
}

@Suite(
    "Config drives read by isoinfo, xorriso, blkid, and compared with genisoimage",
    .requires(.programs("isoinfo", "xorriso", "blkid", "genisoimage")))
struct ConfigDriveToolTests {
    let directory: TemporaryDirectory
    let iso: URL

    init() throws {
        directory = try TemporaryDirectory("config-drive")
        iso = directory.url.appending(path: "config-2.iso")
        try ConfigDriveFixture.image.write(to: iso)
    }

    @Test("isoinfo -R -f and -J -f list the directories and files by their real paths")
    func listings() throws {
        defer { directory.remove() }
        for mode in ["-R", "-J"] {
            let text = try run("/usr/bin/isoinfo", [mode, "-f", "-i", iso.path])
            let listed = Set(text.split(separator: "\n").map(String.init))
            #expect(listed == ConfigDriveFixture.listing, "isoinfo \(mode) -f: \(text)")
        }
        // Level 1 names, as genisoimage writes them: directories without a dot or version.
        let plain = try run("/usr/bin/isoinfo", ["-f", "-i", iso.path])
        #expect(plain.contains("/OPENSTAC/LATEST/META_DAT.JSO;1\n"), "\(plain)")
        #expect(plain.contains("/OPENSTAC/LATEST/USER_DAT.;1\n"), "\(plain)")
    }

    @Test("isoinfo -d and blkid see the config-2 volume with Rock Ridge and Joliet")
    func label() throws {
        defer { directory.remove() }
        let text = try run("/usr/bin/isoinfo", ["-d", "-i", iso.path])
        #expect(text.contains("Volume id: config-2"), "\(text)")
        #expect(text.contains("Joliet with UCS level 3 found"), "\(text)")
        #expect(text.contains("Rock Ridge signatures version 1 found"), "\(text)")
        let blkid = try run("/usr/sbin/blkid", ["-p", "-o", "export", iso.path])
        #expect(blkid.contains("LABEL=config-2\n"), "\(blkid)")
        #expect(blkid.contains("TYPE=iso9660\n"), "\(blkid)")
    }

    @Test("isoinfo -R -x and -J -x extract every file byte for byte")
    func extraction() throws {
        defer { directory.remove() }
        for file in ConfigDriveFixture.files {
            guard case .bytes(let bytes) = file.contents else { continue }
            #expect(try runBytes("/usr/bin/isoinfo", ["-R", "-i", iso.path, "-x", "/\(file.name)"]) == bytes)
            #expect(try runBytes("/usr/bin/isoinfo", ["-J", "-i", iso.path, "-x", "/\(file.name)"]) == bytes)
        }
    }

    @Test("xorriso finds every directory and file and reports no problem")
    func xorriso() throws {
        defer { directory.remove() }
        let (status, text) = try runCombined(
            "xorriso", ["-abort_on", "WARNING", "-indev", iso.path, "-find", "/", "-exec", "lsdl"])
        #expect(status == 0, "\(text)")
        for path in ConfigDriveFixture.listing { #expect(text.contains("'\(path)'"), "\(text)") }
        #expect(text.contains("drwxr-xr-x"), "\(text)")
        #expect(!text.contains("WARNING") && !text.contains("FAILURE"), "\(text)")
    }

    @Test(
        "path tables, names and directory link counts are those genisoimage -r -J writes for the same tree",
        arguments: ["config drive", "larger tree"])
    func genisoimage(tree: String) throws {
        defer { directory.remove() }
        let files = tree == "config drive" ? ConfigDriveFixture.files : ConfigDriveFixture.referenceFiles
        let ours = directory.url.appending(path: "ours.iso")
        try ISO9660Image(volumeIdentifier: "config-2", timestamp: SeedFixture.date, files: files).write(to: ours)
        let source = directory.url.appending(path: "tree")
        try ConfigDriveFixture.materialize(files, in: source)
        let reference = directory.url.appending(path: "genisoimage.iso")
        let (status, output) = try runCombined(
            "genisoimage", ["-quiet", "-V", "config-2", "-r", "-J", "-o", reference.path, source.path])
        try #require(status == 0, "genisoimage failed: \(output)")

        // isoinfo -p: "Path table starts at block B, size S", then "number: parent extent identifier".
        func pathTable(_ image: URL, _ mode: [String]) throws -> [String] {
            let lines = try run("/usr/bin/isoinfo", mode + ["-p", "-i", image.path]).split(separator: "\n")
            return lines.map { line in
                let fields = line.split(separator: " ")
                if line.hasPrefix("Path table") { return "size \(fields.last ?? "")" }
                return ([fields[0], fields[1]] + fields.dropFirst(3)).joined(separator: " ")
            }
        }
        for mode in [[], ["-J"]] {
            let mine = try pathTable(ours, mode)
            #expect(try mine == pathTable(reference, mode), "isoinfo \(mode) -p")
            if tree == "larger tree" {
                // Tables of several sectors: the sectors after them move.
                #expect((Int(mine[0].dropFirst(5)) ?? 0) > 2048, "isoinfo \(mode) -p: \(mine[0])")
            }
        }
        let ourTables = pathTables(try [UInt8](Data(contentsOf: ours)))
        let referenceTables = pathTables(try [UInt8](Data(contentsOf: reference)))
        for (table, (mine, theirs)) in zip(["ISO L", "ISO M", "Joliet L", "Joliet M"], zip(ourTables, referenceTables))
        {
            #expect(mine.map(\.identifier) == theirs.map(\.identifier), "\(table): identifiers")
            #expect(mine.map(\.parent) == theirs.map(\.parent), "\(table): parents")
        }
        #expect(ourTables[0].map(\.extent) == ourTables[1].map(\.extent), "ISO L and M extents")
        #expect(ourTables[2].map(\.extent) == ourTables[3].map(\.extent), "Joliet L and M extents")

        for mode in [[], ["-R"], ["-J"]] {
            let mine = Set(try run("/usr/bin/isoinfo", mode + ["-f", "-i", ours.path]).split(separator: "\n"))
            let theirs = Set(try run("/usr/bin/isoinfo", mode + ["-f", "-i", reference.path]).split(separator: "\n"))
            #expect(mine == theirs, "isoinfo \(mode) -f: \(mine.symmetricDifference(theirs).sorted())")
        }

        // Rock Ridge link counts of directories (2 + subdirectories), listing by listing.
        func directoryLinks(_ image: URL) throws -> [String] {
            try run("/usr/bin/isoinfo", ["-R", "-l", "-i", image.path]).split(separator: "\n").compactMap { line in
                if line.hasPrefix("Directory listing of ") { return String(line) }
                guard line.hasPrefix("d"), let bracket = line.lastIndex(of: "]") else { return nil }
                let links = line.split(separator: " ")[1]
                return "\(links) \(line[line.index(after: bracket)...].trimmingCharacters(in: .whitespaces))"
            }
        }
        #expect(try directoryLinks(ours) == directoryLinks(reference))

        let (xorrisoStatus, text) = try runCombined(
            "xorriso", ["-abort_on", "WARNING", "-indev", ours.path, "-find", "/", "-exec", "lsdl"])
        #expect(xorrisoStatus == 0 && !text.contains("WARNING") && !text.contains("FAILURE"), "\(text)")
    }

    @Test("directories whose names differ only in Unicode normalization stay two, each file under its own bytes")
    func normalization() throws {
        defer { directory.remove() }
        let files: [ISO9660Image.File] = [
            .init(name: "\u{E9}/a", contents: Array("a".utf8)), .init(name: "e\u{301}/b", contents: Array("b".utf8)),
        ]
        let image = directory.url.appending(path: "normalization.iso")
        try ISO9660Image(timestamp: SeedFixture.date, files: files).write(to: image)
        let tree = directory.url.appending(path: "tree")
        // Names are UTF-8: osirrox converts them to the locale's character set.
        let (status, output) = try runCombined(
            "osirrox", ["-indev", image.path, "-extract", "/", tree.path], environment: ["LC_ALL=C.UTF-8"])
        try #require(status == 0, "\(output)")
        #expect(try FileManager.default.contentsOfDirectory(atPath: tree.path).count == 2)
        for file in files {
            guard case .bytes(let bytes) = file.contents else { continue }
            #expect(try [UInt8](Data(contentsOf: tree.appending(path: file.name))) == bytes, "\(file.name)")
        }
    }

    @Test("directory names that collide once shortened get distinct level 1 identifiers; Rock Ridge keeps the names")
    func collisions() throws {
        defer { directory.remove() }
        let files: [ISO9660Image.File] = [
            "LATEST", "latest/a", "openstack1/b", "openstack2/c", "openstack2/LATEST", "openstack2/latest/d",
        ].map { .init(name: $0, contents: Array($0.utf8)) }
        let image = directory.url.appending(path: "collisions.iso")
        try ISO9660Image(timestamp: SeedFixture.date, files: files).write(to: image)
        let plain = Set(try run("/usr/bin/isoinfo", ["-f", "-i", image.path]).split(separator: "\n"))
        #expect(
            plain == [
                "/LATEST.;1", "/LATEST1", "/LATEST1/A.;1", "/OPENSTAC", "/OPENSTAC/B.;1", "/OPENSTA1",
                "/OPENSTA1/C.;1", "/OPENSTA1/LATEST.;1", "/OPENSTA1/LATEST1", "/OPENSTA1/LATEST1/D.;1",
            ], "\(plain.sorted())")
        for file in files {
            #expect(
                try runBytes("/usr/bin/isoinfo", ["-R", "-i", image.path, "-x", "/\(file.name)"])
                    == Array(file.name.utf8))
            #expect(
                try runBytes("/usr/bin/isoinfo", ["-J", "-i", image.path, "-x", "/\(file.name)"])
                    == Array(file.name.utf8))
        }
        let (status, text) = try runCombined(
            "xorriso", ["-abort_on", "WARNING", "-indev", image.path, "-find", "/", "-exec", "lsdl"])
        #expect(status == 0 && !text.contains("WARNING") && !text.contains("FAILURE"), "\(text)")
    }
}

/// cloud-init's own code (Debian's package, module `cloudinit`), run by the system Python: a pyenv or venv
/// python3 first on PATH does not see it.
@Suite("Config drives read by cloud-init", .requires(.programs("cloud-init", "xorriso")))
struct ConfigDriveCloudInitTests {
    static let python = "/usr/bin/python3"

    /// What `read_config_drive(folder)` returns, as JSON on the last line of output.
    static func readConfigDrive(_ folder: URL) throws -> [String: Any] {
        let script = """
            import json, sys
            from cloudinit.sources.DataSourceConfigDrive import read_config_drive
            r = read_config_drive(sys.argv[1])
            print(json.dumps({"version": r["version"], "uuid": r["metadata"]["uuid"],
                "hostname": r["metadata"]["hostname"], "userdata": r["userdata"].decode(),
                "vendordata": r["vendordata"], "networkdata": r["networkdata"]}))
            """
        let (status, output) = try runCombined(python, ["-c", script, folder.path])
        try #require(status == 0, "\(output)")
        let last = output.split(separator: "\n").last.map(String.init) ?? ""
        return try #require(JSONSerialization.jsonObject(with: Data(last.utf8)) as? [String: Any], "\(output)")
    }

    static func check(_ result: [String: Any]) {
        #expect(result["version"] as? Int == 2)
        #expect(result["uuid"] as? String == "3c2c7e9a-1f4e-4b53-9d1e-0a6f7d2b8c11")
        #expect(result["hostname"] as? String == "web")
        #expect(result["userdata"] as? String == "#cloud-config\nhostname: web\n")
        #expect((result["vendordata"] as? [String: Any])?["cloud-init"] as? String == "#cloud-config\n")
        #expect((result["networkdata"] as? [String: Any])?["links"] as? [Any] != nil)
    }

    @Test("read_config_drive finds version 2 in the tree osirrox extracts by its Rock Ridge names")
    func extracted() throws {
        let directory = try TemporaryDirectory("config-drive-cloud-init")
        defer { directory.remove() }
        let iso = directory.url.appending(path: "config-2.iso")
        try ConfigDriveFixture.image.write(to: iso)
        let tree = directory.url.appending(path: "tree")
        let (status, output) = try runCombined("osirrox", ["-indev", iso.path, "-extract", "/", tree.path])
        try #require(status == 0, "\(output)")
        Self.check(try Self.readConfigDrive(tree))
    }

    @Test(
        "as root: cloud-init finds the loop device by its label, and reads the drive the kernel mounts",
        .requires(.root, .programs("losetup", "mount", "umount", "blkid")))
    func mounted() throws {
        let directory = try TemporaryDirectory("config-drive-mount")
        defer { directory.remove() }
        let iso = directory.url.appending(path: "config-2.iso")
        try ConfigDriveFixture.image.write(to: iso)
        let (attached, device) = try runCombined("losetup", ["--find", "--show", "--read-only", iso.path])
        try #require(attached == 0, "\(device)")
        let loop = device.trimmingCharacters(in: .whitespacesAndNewlines)
        defer { _ = try? runCombined("losetup", ["--detach", loop]) }

        // How DataSourceConfigDrive finds the drive: blkid, by the label config-2.
        let (found, devices) = try runCombined(
            Self.python,
            ["-c", "from cloudinit.sources.DataSourceConfigDrive import find_candidate_devs as f; print(f())"])
        #expect(found == 0 && devices.contains("'\(loop)'"), "\(devices)")

        let mountPoint = directory.url.appending(path: "mnt")
        try FileManager.default.createDirectory(at: mountPoint, withIntermediateDirectories: true)
        let (mountStatus, mountOutput) = try runCombined("mount", ["-t", "iso9660", "-o", "ro", loop, mountPoint.path])
        if mountStatus != 0, mountOutput.contains("unknown filesystem type") {
            // Not a missing package: the running kernel has no isofs (e.g. a minimal VM kernel).
            print("skipped: mounting the config drive: this kernel cannot mount iso9660: \(mountOutput)")
            return
        }
        try #require(mountStatus == 0, "\(mountOutput)")
        defer { _ = try? runCombined("umount", [mountPoint.path]) }
        for file in ConfigDriveFixture.files {
            guard case .bytes(let bytes) = file.contents else { continue }
            #expect(try [UInt8](Data(contentsOf: mountPoint.appending(path: file.name))) == bytes, "\(file.name)")
        }
        // Rock Ridge link counts, as the kernel reports them: 2 + subdirectories.
        for (path, links) in [("", 3), ("openstack", 3), ("openstack/latest", 2)] {
            var info = stat()
            #expect(stat(mountPoint.appending(path: path).path, &info) == 0)
            #expect(Int(info.st_nlink) == links, "\(path)")
        }
        Self.check(try Self.readConfigDrive(mountPoint))
    }
}
