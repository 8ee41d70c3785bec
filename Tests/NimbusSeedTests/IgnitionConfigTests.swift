import Foundation
import NimbusCore
import NimbusSeed
import NimbusTestSupport
import Testing

@Suite("Ignition configs")
struct IgnitionConfigTests {
    static func config() throws -> InstanceConfig {
        var config = InstanceConfig()
        config.hostname = "core-1"
        config.timezone = "Europe/Paris"
        config.locale = "C.UTF-8"
        config.sshAuthorizedKeys = [try Fixtures.userKey().publicKeyLine]
        config.users = [
            InstanceConfig.User(
                name: "dev", sshAuthorizedKeys: [try Fixtures.userKey().publicKeyLine], groups: ["wheel"])
        ]
        config.hostKeys = InstanceConfig.HostKeys(ed25519: try Fixtures.hostKey())
        config.writeFiles = [
            InstanceConfig.WriteFile(
                path: "/etc/nimbus/hello.txt", content: "hello\n", owner: "root:root", permissions: "0640"),
            InstanceConfig.WriteFile(path: "/etc/nimbus/blob", content: "aGVsbG8=", encoding: "b64"),
            InstanceConfig.WriteFile(path: "/etc/motd", content: "more\n", append: true),
        ]
        config.runcmd = [.shell("echo done > /var/tmp/runcmd"), .arguments(["touch", "/var/tmp/x"])]
        return config
    }

    @Test("users, hostname, files, timezone link and the runcmd unit render to the golden config")
    func golden() throws {
        let ignition = try IgnitionConfig(config: Self.config())
        try Fixtures.expectGolden(Array(ignition.json.utf8), "full.ign")
        #expect(ignition.json.contains("\"mode\" : 416"))  // 0640 in decimal
        #expect(ignition.json.contains("\"target\" : \"../usr/share/zoneinfo/Europe/Paris\""))
        #expect(ignition.json.contains("[Install]\\nWantedBy=multi-user.target"))
    }

    @Test(
        "every rendered config passes ignition-validate",
        .requires(.programs("ignition-validate")))
    func validate() throws {
        try expectValidIgnition(try IgnitionConfig(config: Self.config()).json)
        try expectValidIgnition(try IgnitionConfig(config: InstanceConfig()).json)
        let user = try UserData(
            bytes: Array(
                "#cloud-config\nhostname: x\nusers: [default, {name: u, groups: 'a, b', sudo: ALL=(ALL) ALL}]\nwrite_files: [{path: /a, content: b, permissions: '0600'}]\n"
                    .utf8), source: "ud")
        try expectValidIgnition(try IgnitionConfig(config: InstanceConfig(), userData: user).json)
    }

    @Test(
        "a volume is an ext4 filesystem Ignition keeps when it is there, a mount unit named as systemd names it, and a grow service; ignition-validate accepts it",
        .requires(.programs("ignition-validate")))
    func volumes() throws {
        var config = InstanceConfig()
        config.volumes = [
            InstanceConfig.DataVolume(
                device: "/dev/disk/by-id/virtio-vol-data", label: "nv-data", mountPoint: "/var/lib/app-data")
        ]
        let json = try IgnitionConfig(config: config).json
        try expectValidIgnition(json)
        let document = try #require(try JSONSerialization.jsonObject(with: Data(json.utf8)) as? [String: Any])
        let filesystems = (document["storage"] as? [String: Any])?["filesystems"] as? [[String: Any]]
        #expect(filesystems?.first?["device"] as? String == "/dev/disk/by-id/virtio-vol-data")
        #expect(filesystems?.first?["label"] as? String == "nv-data")
        #expect(filesystems?.first?["wipeFilesystem"] as? Bool == false)
        let units = ((document["systemd"] as? [String: Any])?["units"] as? [[String: Any]])?.compactMap {
            $0["name"] as? String
        }
        // `systemd-escape --path /var/lib/app-data`.
        #expect(units == ["var-lib-app\\x2ddata.mount", "nimbus-grow-var-lib-app\\x2ddata.service"])
        #expect(json.contains("What=/dev/disk/by-label/nv-data\\nWhere=/var/lib/app-data"), "\(json)")
    }

    @Test("a user's Ignition config is merged as written through a data URL, and its newer spec is declared")
    func userConfigMerged() throws {
        let text = #"{"ignition": {"version": "3.3.0"}, "storage": {"files": [{"path": "/etc/mine", "mode": 420}]}}"#
        let user = try UserIgnition(text: text, source: "mine.ign")
        #expect(user.version == "3.3.0")
        let ignition = try IgnitionConfig(config: try Self.config(), userConfig: user)
        #expect(ignition.specVersion == "3.3.0")
        #expect(ignition.versionReason.contains("mine.ign"))
        let document = try #require(
            try JSONSerialization.jsonObject(with: Data(ignition.json.utf8)) as? [String: Any])
        let section = try #require(document["ignition"] as? [String: Any])
        let merge = try #require((section["config"] as? [String: Any])?["merge"] as? [[String: Any]])
        let source = try #require(merge.first?["source"] as? String)
        #expect(source.hasPrefix("data:;base64,"))
        let embedded = Data(base64Encoded: String(source.dropFirst("data:;base64,".count)))
        #expect(embedded == Data(text.utf8))
        // An older user spec leaves Nimbus's own.
        let older = try UserIgnition(text: #"{"ignition": {"version": "3.0.0"}}"#, source: "old.ign")
        #expect(try IgnitionConfig(config: InstanceConfig(), userConfig: older).specVersion == "3.0.0")
    }

    @Test(
        "a merged config passes ignition-validate; ignition-validate's complaint about a user config is quoted",
        .requires(.programs("ignition-validate")))
    func userConfigValidated() async throws {
        let user = try UserIgnition(text: #"{"ignition": {"version": "3.3.0"}}"#, source: "mine.ign")
        try expectValidIgnition(try IgnitionConfig(config: try Self.config(), userConfig: user).json)
        _ = try await user.validated()
        let bad = try UserIgnition(
            text: #"{"ignition": {"version": "3.3.0"}, "storage": {"files": [{"path": "etc/x"}]}}"#, source: "bad.ign")
        await #expect(throws: NimbusError.self) { try await bad.validated() }
        do {
            _ = try await bad.validated()
        } catch {
            #expect(error.message.contains("ignition-validate rejects bad.ign"), "\(error.message)")
            #expect(error.message.contains("path"), "\(error.message)")
        }
    }

    @Test("a user config that is not Ignition 3.x is refused, naming the file and the fix")
    func userConfigRefused() {
        for (text, message) in [
            ("nope", "mine.ign is not JSON"), ("[]", "is JSON but not an object"),
            (#"{"ignition": {}}"#, "has no ignition.version"),
            (#"{"ignition": {"version": "2.3.0"}}"#, "is Ignition spec 2.3.0; Nimbus takes spec 3.x"),
        ] {
            #expect {
                _ = try UserIgnition(text: text, source: "mine.ign")
            } throws: { error in
                "\(error)".contains(message)
            }
        }
    }

    @Test("the spec version is the lowest that expresses the config, and says why")
    func lowestVersion() throws {
        for config in [try Self.config(), InstanceConfig()] {
            let ignition = try IgnitionConfig(config: config)
            #expect(ignition.specVersion == "3.0.0")
            #expect(ignition.json.contains("\"version\" : \"3.0.0\""))
            #expect(ignition.versionReason.contains("need nothing newer"))
        }
    }

    @Test("with no user named, keys go to core")
    func coreByDefault() throws {
        var config = InstanceConfig()
        config.sshAuthorizedKeys = [
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPA/lmdaI4jHKfq2Ev6ymPMA45fCDR2Jnn86VoLICWrB k"
        ]
        let json = try IgnitionConfig(config: config).json
        #expect(json.contains("\"name\" : \"core\""))
        #expect(json.contains("AAAAIPA/lmdaI4jHKfq2Ev6ymPMA45fCDR2Jnn86VoLICWrB k"))
    }

    @Test(
        "options with no Ignition equivalent are errors naming them",
        arguments: [
            "packages: [htop]", "mounts: [[/dev/vdb, /srv]]", "bootcmd: [echo]", "apt: {preserve_sources_list: true}",
            "power_state: {mode: reboot}", "ssh_pwauth: true",
        ])
    func unsupported(line: String) throws {
        let option = String(line.prefix { $0 != ":" })
        let user = try UserData(bytes: Array("#cloud-config\n\(line)\n".utf8), source: "ud")
        #expect(throws: SeedError.unsupportedByIgnition(option: option)) {
            try IgnitionConfig(config: InstanceConfig(), userData: user)
        }
    }

    @Test("non-cloud-config user-data cannot become Ignition")
    func scriptsRejected() throws {
        let user = try UserData(bytes: Array("#!/bin/sh\necho\n".utf8), source: "run.sh")
        #expect(throws: SeedError.self) { try IgnitionConfig(config: InstanceConfig(), userData: user) }
    }
}
