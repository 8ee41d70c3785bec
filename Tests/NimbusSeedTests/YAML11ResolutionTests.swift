import Foundation
import NimbusTestSupport
import Testing
import Yams

@testable import NimbusSeed

/// Nimbus parses YAML without Yams's regular-expression resolver (see `YAML11Resolution`); these tests
/// show that what it reads is what `Resolver.default` (YAML 1.1, as PyYAML in cloud-init) would give.
@Suite("YAML 1.1 typing without regular expressions")
struct YAML11ResolutionTests {
    static func expected(_ string: String) -> Yams.Tag.Name {
        Resolver.default.resolveTag(of: Node(string))
    }

    /// Strings near every rule's edges: booleans, integers in all bases, floats, sexagesimal numbers,
    /// timestamps, nulls, merge and value keys, and line terminators ICU's `$` lets through.
    static let curated: [String] = [
        "", "~", "null", "Null", "NULL", "nULL", "none", "yes", "Yes", "YES", "yEs", "no", "No", "NO", "y", "n",
        "true", "True", "TRUE", "tRue", "false", "False", "FALSE", "on", "On", "ON", "off", "Off", "OFF", "oN",
        "0", "00", "07", "08", "0644", "0755", "0o644", "0o", "0o8", "0b", "0b101", "0b2", "0b_", "-0b1", "+0o7",
        "0x", "0x1F", "0xg", "0x_", "-0x1f", "1", "-1", "+1", "10", "1_000", "_1", "1_", "-", "+", "+-1",
        "1:30", "1:60", "1:5", "1:59:59", "190:20:30", "0:30", "-1:30", "1:30.5", "1:30.", "1:3a", "1::30",
        "1.", "1.5", "-1.5", "+.5", ".5", "._", "._5", ".5e+3", ".5e3", ".5E-3", "1e3", "1e", "1e+", "1.5e-10",
        "6.8523015e+5", "685.230_15e+03", "685_230.15", "1.2.3", ".", "..", ".inf", "-.inf", "+.Inf", ".INF",
        ".nan", ".NaN", ".NAN", "-.nan", ".Nan", "inf", "nan", "<<", "<", "=", "==",
        "2001-12-14", "2001-12-14t21:59:43.10-05:00", "2001-12-14 21:59:43.10 -5", "2001-12-15T02:59:43.1Z",
        "2001-12-15 2:59:43.10", "2002-12-14", "2001-1-1", "2001-1-1T1:00:00", "2001-1-1 1:00:00",
        "2001-01-01\t01:00:00", "2001-01-01T01:00:00 Z", "2001-01-01T01:00:00+01", "2001-01-01T01:00:00+1:00",
        "2001-01-01T01:00:00+01:0", "2001-01-01T01:00:00.", "2001-01-01T01:00:00 ", "2001-01-01T1:0:00",
        "20011-01-01", "2001-001-01", "2001-01-01T01:00:00Zz", "12:30:45",
        "true\n", "true\r\n", "true\r", "true\u{0B}", "true\u{0C}", "true\u{85}", "true\u{2028}", "true\u{2029}",
        "true\n\n", "\ntrue", "1\n", "\n", "\r\n", "~\n", "<<\n", "=\r\n", "2001-12-14\n", "0x1F\u{2028}",
        "１", "٣", "0x１", "true ", " true", "hostname", "ALL=(ALL) NOPASSWD:ALL", "52:54:00:12:34:56",
        "/bin/bash", "iid-bench-1", "ssh-ed25519 AAAA", "é", "🙂",
    ]

    @Test("each curated string is typed as Resolver.default types it")
    func curatedStrings() {
        for string in Self.curated {
            #expect(YAML11Resolution.tag(of: string) == Self.expected(string), "\(string.debugDescription)")
        }
    }

    @Test("every string of up to three characters from the rules' alphabet is typed as Resolver.default types it")
    func exhaustiveShortStrings() {
        let alphabet = Array("0159_.:-+eExbo:TZ \tn<=~\n")
        var strings = [""]
        var layer = [""]
        for _ in 0..<3 {
            layer = layer.flatMap { prefix in alphabet.map { prefix + String($0) } }
            strings += layer
        }
        var mismatches: [String] = []
        for string in strings where YAML11Resolution.tag(of: string) != Self.expected(string) {
            mismatches.append(string)
        }
        #expect(mismatches.isEmpty, "\(mismatches.prefix(20).map(\.debugDescription))")
    }

    @Test("random strings shaped like numbers and dates are typed as Resolver.default types them")
    func randomStrings() {
        // A fixed-seed generator, so a failure is reproducible.
        var state: UInt64 = 0x5EED
        func next(_ bound: Int) -> Int {
            state = state &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
            return Int((state >> 33) % UInt64(bound))
        }
        let pieces = [
            "0", "1", "5", "6", "9", "12", "59", "60", "2001", "_", ".", ":", "-", "+", "e", "E", "x", "b", "o", "T",
            "t", "Z", " ", "\t", "inf", "nan", "0x", "0b", "0o", "1:", ":3", "-12-", "2001-12-14", "\n",
        ]
        var mismatches: [String] = []
        for _ in 0..<20_000 {
            let string = (0..<(1 + next(8))).map { _ in pieces[next(pieces.count)] }.joined()
            if YAML11Resolution.tag(of: string) != Self.expected(string) { mismatches.append(string) }
        }
        #expect(mismatches.isEmpty, "\(mismatches.prefix(20).map(\.debugDescription))")
    }

    static let documents: [String] = [
        """
        #cloud-config
        hostname: bench
        manage_etc_hosts: true
        ssh_pwauth: no
        package_update: on
        users:
          - name: dev
            sudo: ALL=(ALL) NOPASSWD:ALL
            lock_passwd: False
            uid: 1001
        write_files:
          - path: /etc/motd
            content: |
              Welcome.
            permissions: '0644'
          - path: /etc/x
            permissions: 0644
            owner: root:root
            append: yes
        swap: {size: 1.5e9, maxsize: ~}
        power_state: {delay: +30, timeout: 1:30, condition: null}
        runcmd:
          - [echo, yes, 0x1F, .inf, 2001-12-14, "quoted yes", !!str on, '', ""]
        """,
        "1: int key\n\"1\": str key\nyes: bool key\n\"yes\": str key\n~: null key\n",
        "a: &x {b: [1, yes]}\nc: *x\n&k key: value\nother: *k\n",
        "? [1, 2]\n: complex\n? [\"1\", 2]\n: other\n",
        "!!str yes: explicit\nyes: implicit\n",
        "!!str 1: explicit str key\n!!str null: another\n",
        "? [1, yes]\n: one complex key\nplain: 1\n",
        "- !!int 7\n- !!str 7\n- ! 7\n- !custom 7\n- 7\n",
        "instance-id: iid-bench-1\nlocal-hostname: bench\n",
        "version: 2\nethernets:\n  primary:\n    match:\n      macaddress: \"52:54:00:12:34:56\"\n    dhcp4: true\n",
    ]

    @Test(
        "parsed documents equal Yams's with Resolver.default, node for node, and read the same booleans, integers and nulls"
    )
    func documentsMatchDefaultResolver() throws {
        for document in Self.documents {
            let ours = try YAML.parse(document, file: "doc")
            let reference = try Yams.compose(yaml: document)
            #expect(ours == reference, "\(document)")
            guard let ours, let reference else { continue }
            #expect(Self.readings(ours) == Self.readings(reference), "\(document)")
        }
    }

    /// Every scalar's text, tag, `bool`, `int` and `null` reading, in document order.
    static func readings(_ node: Node) -> [String] {
        switch node {
        case .scalar:
            return [
                "\(node.string ?? "-") \(node.tag.rawValue) \(String(describing: node.bool)) "
                    + "\(String(describing: node.int)) \(node.null != nil)"
            ]
        case .sequence(let sequence): return sequence.flatMap(readings)
        case .mapping(let mapping): return mapping.flatMap { readings($0.key) + readings($0.value) }
        case .alias: return ["alias"]
        }
    }

    @Test("duplicate keys are refused exactly where Resolver.default refuses them")
    func duplicateKeys() throws {
        // `1` and `"1"` are distinct keys once typed (int and str): accepted.
        #expect(try YAML.parse("1: a\n\"1\": b\n", file: "doc") == (try Yams.compose(yaml: "1: a\n\"1\": b\n")))
        // The same key twice, and a key typed explicitly as what the plain one resolves to: refused.
        for document in ["a: 1\nb: 2\na: 3\n", "!!int 1: a\n1: b\n", "yes: a\n!!bool yes: b\n"] {
            #expect(throws: (any Error).self) { try Yams.compose(yaml: document) }
            #expect(throws: SeedError.self) { try YAML.parse(document, file: "doc") }
        }
        do {
            _ = try YAML.parse("a: 1\nb: 2\na: 3\n", file: "user-data")
            Issue.record("a duplicate key was accepted")
        } catch {
            guard case .invalidYAML(let file, _, _, _) = error else {
                Issue.record("unexpected \(error)")
                return
            }
            #expect(file == "user-data")
        }
    }

    @Test("the first line of user-data is trimmed as CharacterSet.whitespaces trims it")
    func classifyTrimming() {
        let lines = [
            "#cloud-config", "  #cloud-config", "\t#cloud-config", "\u{A0}#cloud-config", "\u{3000}#!/bin/sh",
            "\r#cloud-config", " \r #include", "#cloud-config \r", "\u{2028}#cloud-config", "\n", "", " ", "\u{A0}",
            "\u{200B}#cloud-config", "\u{1680}## template: jinja",
        ]
        for line in lines {
            let foundation = line.trimmingCharacters(in: .whitespaces).replacingOccurrences(of: "\r", with: "")
            let ours = String(
                String.UnicodeScalarView(UserData.trimmingWhitespace(line.unicodeScalars).filter { $0 != "\r" }))
            #expect(ours == foundation, "\(line.debugDescription)")
        }
        var differing: [UInt32] = []
        for value in UInt32(0)...0x10FFFF {
            guard let scalar = Unicode.Scalar(value) else { continue }
            if UserData.isWhitespace(scalar) != CharacterSet.whitespaces.contains(scalar) { differing.append(value) }
        }
        #expect(differing.isEmpty, "\(differing.map { String($0, radix: 16) })")
        #expect(UserData.classify(Array("\u{A0}\t#cloud-config\r\nhostname: x\n".utf8)) == .cloudConfig)
        #expect(UserData.classify(Array(" \r#!/bin/sh\n".utf8)) == .script)
    }

    @Test("a seed written without fsync replaces the file atomically and leaves nothing else behind")
    func nonDurableWrite() async throws {
        try await TemporaryDirectory.with("seed-write") { directory in
            let folder = directory.url
            let url = folder.appending(path: "seed.iso")
            try Data("old".utf8).write(to: url)
            try SeedFiles.write(Data("new".utf8), to: url, durable: false)
            #expect(try Data(contentsOf: url) == Data("new".utf8))
            try SeedFiles.write(Data(), to: folder.appending(path: "empty"), durable: false)
            #expect(try Data(contentsOf: folder.appending(path: "empty")).isEmpty)
            #expect(try FileManager.default.contentsOfDirectory(atPath: folder.path).sorted() == ["empty", "seed.iso"])
            let missing = folder.appending(path: "no/such/seed.iso")
            #expect(
                throws: SeedError.io(
                    path: missing.path, reason: "cannot write it (does the folder exist and is it writable?)")
            ) {
                try SeedFiles.write(Data("x".utf8), to: missing, durable: false)
            }
        }
    }

    @Test("user files are read whole from files and pipes; a missing or unreadable one names the problem")
    func readUserFiles() async throws {
        try await TemporaryDirectory.with("seed-read") { directory in
            let file = directory.url.appending(path: "meta-data")
            let text = String(repeating: "instance-id: iid-1\n", count: 10_000)  // larger than one read
            try Data(text.utf8).write(to: file)
            #expect(try UserFile.read(file.path).bytes == Array(text.utf8))
            let pipe = Pipe()
            pipe.fileHandleForWriting.write(Data("local-hostname: web\n".utf8))
            try pipe.fileHandleForWriting.close()
            let viaPipe = try UserFile.read("/dev/fd/\(pipe.fileHandleForReading.fileDescriptor)")
            #expect(viaPipe.bytes == Array("local-hostname: web\n".utf8))
            let missing = directory.url.appending(path: "nope").path
            #expect(throws: SeedError.io(path: missing, reason: "no such file")) { try UserFile.read(missing) }
            #expect(throws: SeedError.io(path: directory.url.path, reason: "cannot read it (is it a readable file?)")) {
                try UserFile.read(directory.url.path)
            }
        }
    }
}
