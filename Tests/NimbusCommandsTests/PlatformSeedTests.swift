import Foundation
import NimbusCore
import NimbusTestSupport
import Testing

/// `nimbus seed --format configdrive` and `--format ovf` through the binary, each read back by Debian's
/// cloud-init (the package installed on this host): the config drive extracted by osirrox by its Rock Ridge
/// names and read by `read_config_drive`, its network_data.json turned into cloud-init's network config by
/// `convert_net_json`; the OVF environment read by `read_ovf_environment`, its user-data by cloud-init's
/// MIME processing (issue 18).
@Suite("Seeds for other platforms", .requires(.programs("osirrox", "blkid")))
struct PlatformSeedTests {
    static let python = "/usr/bin/python3"
    static let key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPA/lmdaI4jHKfq2Ev6ymPMA45fCDR2Jnn86VoLICWrB me@test"

    /// A folder with user-data, a network-config (one DHCP NIC, one static with a gateway and DNS) and a key.
    struct Inputs {
        let folder: TemporaryDirectory
        var url: URL { folder.url }

        init() throws {
            folder = try TemporaryDirectory("nimbus-platform-seed")
            try Data("#cloud-config\nruncmd: [touch /run/seeded]\n".utf8).write(to: url.appending(path: "user-data"))
            try Data(
                """
                version: 2
                ethernets:
                  nic0:
                    match: {macaddress: "52:54:00:12:34:56"}
                    dhcp4: true
                  nic1:
                    match: {macaddress: "52:54:00:12:34:57"}
                    addresses: [192.168.100.9/24]
                    gateway4: 192.168.100.1
                    nameservers: {addresses: [192.168.100.1]}

                """.utf8
            ).write(to: url.appending(path: "network-config"))
            try Data((PlatformSeedTests.key + "\n").utf8).write(to: url.appending(path: "key.pub"))
        }

        func seed(_ format: String, to output: URL) async throws -> ProgramOutput {
            try await NimbusBinary.run(
                [
                    "seed", "--format", format, output.path, url.appending(path: "user-data").path, "--hostname", "web",
                    "--user", "ops", "--ssh-key", url.appending(path: "key.pub").path, "--network-config",
                    url.appending(path: "network-config").path,
                ], home: url)
        }
    }

    /// Runs `script` with cloud-init's modules; its last line of output as JSON.
    static func cloudInit(_ script: String, _ arguments: [String]) async throws -> [String: Any] {
        let result = try await ProgramRunner.output(python, ["-c", script] + arguments)
        #expect(result.status == 0, "\(result.standardError)")
        let last = result.standardOutput.split(separator: "\n").last.map(String.init) ?? ""
        return try #require(try JSONSerialization.jsonObject(with: Data(last.utf8)) as? [String: Any], "\(result)")
    }

    @Test(
        "configdrive: config-2, read by cloud-init's ConfigDrive reader as version 2 with the personality and the network"
    )
    func configDrive() async throws {
        let inputs = try Inputs()
        defer { inputs.folder.remove() }
        let iso = inputs.url.appending(path: "config.iso")
        let made = try await inputs.seed("configdrive", to: iso)
        #expect(made.status == 0, "\(made.standardError)")
        let blkid = try await ProgramRunner.run("blkid", ["-p", "-o", "export", iso.path])
        #expect(blkid.contains("LABEL=config-2") && blkid.contains("TYPE=iso9660"), "\(blkid)")
        let tree = inputs.url.appending(path: "tree")
        try await ProgramRunner.run("osirrox", ["-indev", iso.path, "-extract", "/", tree.path])
        let read = try await Self.cloudInit(
            """
            import json, sys
            from cloudinit.sources.DataSourceConfigDrive import read_config_drive
            from cloudinit.sources.helpers.openstack import convert_net_json
            r = read_config_drive(sys.argv[1])
            md = r["metadata"]
            net = convert_net_json(r["networkdata"], known_macs={"52:54:00:12:34:56": "ens3", "52:54:00:12:34:57": "ens4"})
            print(json.dumps({"version": r["version"], "uuid": md["uuid"], "hostname": md.get("hostname"),
                "instance": md.get("instance-id"), "userdata": r["userdata"].decode(), "vendordata": r["vendordata"],
                "network": net}))
            """, [tree.path])
        #expect(read["version"] as? Int == 2)
        let uuid = try #require(read["uuid"] as? String)
        #expect(uuid.hasPrefix("iid-web-") && read["instance"] as? String == uuid, "\(read)")
        #expect(read["hostname"] as? String == "web")
        let userData = read["userdata"] as? String ?? ""
        #expect(userData.contains("touch /run/seeded") && userData.contains("ops"), "\(userData)")
        let vendorData = (read["vendordata"] as? [String: Any])?["cloud-init"] as? String ?? ""
        #expect(vendorData.hasPrefix("#cloud-config"), "\(read)")
        // cloud-init's v1 network config: DHCP on ens3, the static address with gateway and DNS on ens4.
        let network = try JSONSerialization.data(withJSONObject: read["network"] ?? [:])
        let text = String(decoding: network, as: UTF8.self)
        for expected in ["\"dhcp4\"", "192.168.100.9", "255.255.255.0", "\"gateway\":\"192.168.100.1\"", "ens4"] {
            #expect(text.contains(expected), "\(expected): \(text)")
        }
    }

    @Test(
        "ovf: an OVF-TRANSPORT ISO whose ovf-env.xml cloud-init reads: instance-id, hostname, key, user-data with vendor-data, network"
    )
    func ovf() async throws {
        let inputs = try Inputs()
        defer { inputs.folder.remove() }
        let iso = inputs.url.appending(path: "ovf.iso")
        let made = try await inputs.seed("ovf", to: iso)
        #expect(made.status == 0, "\(made.standardError)")
        let blkid = try await ProgramRunner.run("blkid", ["-p", "-o", "export", iso.path])
        #expect(blkid.contains("LABEL=OVF-TRANSPORT"), "\(blkid)")
        let tree = inputs.url.appending(path: "tree")
        try await ProgramRunner.run("osirrox", ["-indev", iso.path, "-extract", "/", tree.path])
        let read = try await Self.cloudInit(
            """
            import json, sys
            from cloudinit.sources.DataSourceOVF import read_ovf_environment
            from cloudinit import user_data
            md, ud, cfg = read_ovf_environment(open(sys.argv[1]).read(), True)
            network = md.pop("network-config", None)
            parts = user_data.UserDataProcessor({}).process(ud)
            types = [p.get_content_type() for p in parts.walk() if not p.is_multipart()]
            payloads = [p.get_payload(decode=True).decode() for p in parts.walk() if not p.is_multipart()]
            print(json.dumps({"md": md, "types": types, "payloads": payloads, "network": network}))
            """, [tree.appending(path: "ovf-env.xml").path])
        let md = read["md"] as? [String: Any] ?? [:]
        #expect((md["instance-id"] as? String)?.hasPrefix("iid-web-") == true, "\(md)")
        #expect(md["local-hostname"] as? String == "web", "\(md)")
        let types = read["types"] as? [String] ?? []
        #expect(types == ["text/cloud-config", "text/cloud-config"], "vendor-data then user-data: \(types)")
        let payloads = read["payloads"] as? [String] ?? []
        #expect(payloads.last?.contains("touch /run/seeded") == true, "\(payloads)")
        let network = read["network"] as? [String: Any] ?? [:]
        #expect(network["version"] as? Int == 2, "\(read)")
        #expect((network["ethernets"] as? [String: Any])?["nic1"] != nil, "\(network)")
    }

    @Test(
        "a config drive refuses a version 1 network-config and a NIC without a MAC, naming the fix; nothing is written")
    func refusals() async throws {
        let inputs = try Inputs()
        defer { inputs.folder.remove() }
        let iso = inputs.url.appending(path: "config.iso")
        try Data("version: 1\nconfig: []\n".utf8).write(to: inputs.url.appending(path: "network-config"))
        var result = try await inputs.seed("configdrive", to: iso)
        #expect(result.status == 64 || result.status == NimbusError.Code.invalidArgument.exitStatus, "\(result)")
        #expect(result.standardError.contains("write it as version 2"), "\(result.standardError)")
        #expect(!FileManager.default.fileExists(atPath: iso.path))
        try Data("version: 2\nethernets:\n  eth0:\n    dhcp4: true\n".utf8).write(
            to: inputs.url.appending(path: "network-config"))
        result = try await inputs.seed("configdrive", to: iso)
        #expect(result.standardError.contains("has no match.macaddress"), "\(result.standardError)")
        #expect(!FileManager.default.fileExists(atPath: iso.path))
    }
}
