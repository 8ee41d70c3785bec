import Foundation
import NimbusSeed
import NimbusTestSupport
import Testing
import Yams

@Suite("NoCloud seeds")
struct NoCloudSeedTests {
    @Test("every option renders to the golden meta-data, user-data, vendor-data and network-config")
    func golden() throws {
        let seed = try NoCloudSeed(config: Fixtures.fullConfig(), name: "web")
        try Fixtures.expectGolden(seed.metaData, "full.meta-data")
        try Fixtures.expectGolden(seed.userData, "full.user-data")
        try Fixtures.expectGolden(seed.vendorData, "full.vendor-data")
        try Fixtures.expectGolden(seed.networkConfig, "full.network-config")
    }

    @Test("the seed ISO matches its golden bytes")
    func goldenISO() throws {
        let seed = try NoCloudSeed(config: Fixtures.fullConfig(), name: "web")
        try Fixtures.expectGolden(try seed.isoImage(timestamp: Fixtures.date).bytes(), "full.iso")
    }

    @Test("with no NIC given, network-config is written with no device, so cloud-init's fallback (DHCP) applies")
    func defaults() throws {
        let seed = try NoCloudSeed(config: InstanceConfig())
        let text = String(decoding: seed.networkConfig, as: UTF8.self)
        #expect(text.hasPrefix("# network-config:"))
        #expect(try Yams.load(yaml: text) == nil)
        let vendor = String(decoding: seed.vendorData, as: UTF8.self)
        #expect(vendor.hasPrefix("#cloud-config\n"))
        #expect(
            vendor.contains("ssh_pwauth: false") && vendor.contains("manage_etc_hosts: true")
                && vendor.contains("growpart:"))
    }

    @Test(
        "a NIC known by MAC gets network-config v2 with DHCP, matched by that MAC",
        .requires(.programs("cloud-init")))
    func networkByMAC() throws {
        var config = InstanceConfig()
        config.network = InstanceConfig.Network(interfaces: [.init(macAddress: "52:54:00:AA:BB:CC")])
        let seed = try NoCloudSeed(config: config)
        #expect(
            String(decoding: seed.networkConfig, as: UTF8.self) == """
                version: 2
                ethernets:
                  primary:
                    match:
                      macaddress: "52:54:00:aa:bb:cc"
                    dhcp4: true

                """)
        // cloud-init itself reads it (Debian's renderer is ENI).
        try TemporaryDirectory.withSync { directory in
            let input = directory.url.appending(path: "network-config")
            try Data(seed.networkConfig).write(to: input)
            let result = try runProgram(
                "/usr/bin/cloud-init",
                [
                    "devel", "net-convert", "-p", input.path, "-k", "yaml",
                    "-d", directory.url.path, "-D", "debian", "-O", "eni",
                ])
            #expect(result.status == 0, "\(result.output)")
        }
    }

    @Test("instance-id is stable for the same seed and changes when the seed changes")
    func instanceID() throws {
        var config = try Fixtures.fullConfig()
        let a = try NoCloudSeed(config: config, name: "web")
        let b = try NoCloudSeed(config: config, name: "web")
        #expect(a.instanceID == b.instanceID)
        #expect(a.instanceID?.hasPrefix("iid-web-") == true)
        config.runcmd.append(.shell("true"))
        #expect(try NoCloudSeed(config: config, name: "web").instanceID != a.instanceID)
        #expect(try NoCloudSeed(config: Fixtures.fullConfig(), name: "db").instanceID != a.instanceID)
        // A new root (generation) and a reseed (salt) each give the same personality another id.
        let upgraded = try NoCloudSeed(config: Fixtures.fullConfig(), name: "web", generation: 1).instanceID
        let reseeded = try NoCloudSeed(config: Fixtures.fullConfig(), name: "web", salt: "2026-12-06T21:00:00Z")
        #expect(Set([a.instanceID, upgraded, reseeded.instanceID]).count == 3)
        #expect(
            try NoCloudSeed(config: Fixtures.fullConfig(), name: "web", salt: "2026-12-06T21:00:00Z").instanceID
                == reseeded.instanceID)
    }

    @Test(
        "user-data and vendor-data pass cloud-init schema",
        .requires(.programs("cloud-init")))
    func schema() throws {
        let user = try UserData(
            bytes: Array(
                """
                #cloud-config
                hostname: mine
                users:
                  - default
                  - name: bob
                    ssh_authorized_keys: [ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPA/lmdaI4jHKfq2Ev6ymPMA45fCDR2Jnn86VoLICWrB bob]
                ssh_authorized_keys: [ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPA/lmdaI4jHKfq2Ev6ymPMA45fCDR2Jnn86VoLICWrB x]
                runcmd: [[ls, /]]

                """.utf8), source: "user-data")
        for seed in [
            try NoCloudSeed(config: Fixtures.fullConfig(), name: "web"),
            try NoCloudSeed(config: InstanceConfig()),
            try NoCloudSeed(config: Fixtures.fullConfig(), name: "web", userData: user),
        ] {
            try expectValidCloudConfig(seed.userData)
            try expectValidCloudConfig(seed.vendorData)
        }
    }

    @Test("the user's #cloud-config wins on scalars, lists are appended, Nimbus's user is kept")
    func mergePrecedence() throws {
        var config = InstanceConfig()
        config.hostname = "flag-name"
        config.timezone = "UTC"
        config.defaultUser = InstanceConfig.User(
            name: "nimbus", sshAuthorizedKeys: [try Fixtures.userKey().publicKeyLine])
        config.users = [InstanceConfig.User(name: "dev")]
        config.sshAuthorizedKeys = [
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPA/lmdaI4jHKfq2Ev6ymPMA45fCDR2Jnn86VoLICWrB flag"
        ]
        config.runcmd = [.shell("echo from-flags")]
        let user = try UserData(
            bytes: Array(
                """
                #cloud-config
                hostname: from-file
                users:
                  - name: alice
                ssh_authorized_keys:
                  - ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPA/lmdaI4jHKfq2Ev6ymPMA45fCDR2Jnn86VoLICWrB file
                runcmd:
                  - echo from-file

                """.utf8), source: "user-data")
        let seed = try NoCloudSeed(config: config, name: "web", userData: user)
        try Fixtures.expectGolden(seed.userData, "merged.user-data")
        let parsed = try #require(try Yams.load(yaml: String(decoding: seed.userData, as: UTF8.self)) as? [String: Any])
        #expect(parsed["hostname"] as? String == "from-file")
        #expect(parsed["timezone"] as? String == "UTC")
        let users = try #require(parsed["users"] as? [[String: Any]])
        #expect(users.map { $0["name"] as? String } == ["alice", "dev", "nimbus"])
        #expect(
            (parsed["ssh_authorized_keys"] as? [String])?.map { $0.split(separator: " ").last } == ["file", "flag"])
        #expect(parsed["runcmd"] as? [String] == ["echo from-file", "echo from-flags"])
        #expect(String(decoding: seed.metaData, as: UTF8.self).contains("local-hostname: from-file"))
    }

    @Test("a #cloud-config with nothing to merge reaches the guest byte for byte, comments included")
    func untouchedCloudConfig() throws {
        let text = "#cloud-config\n# my comment\nhostname:   web   # spaced\nruncmd: [ls]\n"
        let user = try UserData(bytes: Array(text.utf8), source: "ud")
        #expect(try NoCloudSeed(config: InstanceConfig(), userData: user).userData == Array(text.utf8))
        var config = InstanceConfig()
        config.defaultUser = InstanceConfig.User(name: "nimbus")
        // Nimbus's user lives in vendor-data, which this user-data does not shadow: still untouched.
        #expect(try NoCloudSeed(config: config, userData: user).userData == Array(text.utf8))
    }

    @Test(
        "scripts, includes, jinja, MIME and gzip user-data pass through untouched",
        arguments: [
            ("#!/bin/sh\necho hi\n", UserData.Kind.script),
            ("#include\nhttp://10.0.2.2/a.yaml\n", .include),
            ("## template: jinja\n#cloud-config\nhostname: {{ v1.local_hostname }}\n", .jinjaTemplate),
            ("Content-Type: multipart/mixed; boundary=\"X\"\nMIME-Version: 1.0\n\n--X\n--X--\n", .mimeMultipart),
            ("#cloud-boothook\n#!/bin/sh\n", .boothook),
        ])
    func passThrough(text: String, kind: UserData.Kind) throws {
        let user = try UserData(bytes: Array(text.utf8), source: "user-data")
        #expect(user.kind == kind)
        var config = InstanceConfig()
        config.hostname = "web"
        let seed = try NoCloudSeed(config: config, userData: user)
        #expect(seed.userData == Array(text.utf8))
        #expect(String(decoding: seed.vendorData, as: UTF8.self).contains("hostname: web"))
    }

    @Test("gzip'ed user-data is recognised and kept byte for byte")
    func gzip() throws {
        let bytes: [UInt8] = [
            0x1F, 0x8B, 0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x03, 0x01, 0x00, 0x00, 0xFF, 0xFF, 0, 0, 0, 0, 0, 0,
            0, 0,
        ]
        let user = try UserData(bytes: bytes, source: "user-data.gz")
        #expect(user.kind == .gzip)
        #expect(try NoCloudSeed(config: InstanceConfig(), userData: user).userData == bytes)
    }

    @Test("invalid YAML names file:line:column")
    func invalidYAML() {
        #expect(
            throws: SeedError.invalidYAML(
                file: "ud.yaml", line: 3, column: 1,
                problem: "while parsing a flow node did not find expected node content")
        ) {
            try UserData(bytes: Array("#cloud-config\nfoo: [\n".utf8), source: "ud.yaml")
        }
    }

    @Test("a #cloud-config that is not a mapping is an error")
    func notMapping() {
        #expect {
            try UserData(bytes: Array("#cloud-config\n- a\n- b\n".utf8), source: "ud")
        } throws: { error in
            (error as? SeedError)?.description
                == "ud:2:1: #cloud-config must be a mapping of keys (like `hostname: web`), not a sequence"
        }
    }

    @Test(
        "a wrong type on a key Nimbus reads names the key",
        arguments: [
            ("hostname: [a]", "ud:2:11: `hostname` must be a string, not a sequence"),
            ("users: web", "ud:2:8: `users` must be a list, not a scalar"),
            ("write_files: [/etc/x]", "ud:2:14: `write_files` must be a list of mappings, not a sequence"),
            ("package_update: maybe", "ud:2:17: `package_update` must be true or false, not a scalar"),
        ])
    func wrongTypes(line: String, message: String) {
        #expect {
            try UserData(bytes: Array("#cloud-config\n\(line)\n".utf8), source: "ud")
        } throws: { error in
            (error as? SeedError)?.description.hasPrefix(message) == true
        }
    }

    @Test("unknown top-level keys are warnings, not errors")
    func unknownKeys() throws {
        let user = try UserData(bytes: Array("#cloud-config\nhostnme: web\npackages: [jq]\n".utf8), source: "ud")
        #expect(user.warnings == ["ud:2:1: unknown cloud-config key `hostnme` is passed on; cloud-init may ignore it"])
    }

    @Test("meta-data and network-config given as files are checked and kept")
    func givenFiles() throws {
        let meta = UserFile(bytes: Array("instance-id: mine\n".utf8), source: "meta")
        let seed = try NoCloudSeed(config: InstanceConfig(), metaData: meta)
        #expect(seed.metaData == meta.bytes)
        #expect(seed.instanceID == nil)
        #expect {
            try NoCloudSeed(
                config: InstanceConfig(), networkConfig: UserFile(bytes: Array("- eth0\n".utf8), source: "net"))
        } throws: { error in
            (error as? SeedError)?.description == "net:1:1: must be a YAML mapping of keys, not a sequence"
        }
    }

    @Test("InstanceConfig decodes with every key missing, and round-trips")
    func codable() throws {
        let empty = try YAMLDecoder().decode(InstanceConfig.self, from: "{}")
        #expect(empty == InstanceConfig())
        #expect(empty.version == InstanceConfig.currentVersion)
        #expect(empty.sshPasswordAuthentication == false)
        let partial = try YAMLDecoder().decode(InstanceConfig.self, from: "hostname: web\nusers: [{name: a}]\n")
        #expect(partial.users.first?.lockPassword == true)
        #expect(partial.users.first?.shell == "/bin/bash")
        let full = try Fixtures.fullConfig()
        let data = try JSONEncoder().encode(full)
        #expect(try JSONDecoder().decode(InstanceConfig.self, from: data) == full)
    }

    @Test("writing an ISO that cannot be written leaves nothing and names the path")
    func writeFailure() throws {
        let seed = try NoCloudSeed(config: InstanceConfig())
        let url = URL(fileURLWithPath: "/nonexistent-folder/seed.iso")
        #expect {
            try seed.writeISO(to: url, timestamp: Fixtures.date)
        } throws: { error in
            (error as? SeedError)?.description.contains("/nonexistent-folder/seed.iso") == true
        }
    }
}
