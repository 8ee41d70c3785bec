import Foundation
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
