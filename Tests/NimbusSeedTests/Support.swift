import Foundation
import NimbusSeed
import NimbusTestSupport
import Testing

/// Fixed inputs, so rendered files can be compared with golden files.
enum Fixtures {
    static let date = Date(timeIntervalSince1970: 1_767_225_600)  // 2026-01-01T00:00:00Z

    static func hostKey() throws -> SSHKeyPair {
        try SSHKeyPair(seed: [UInt8](repeating: 7, count: 32), comment: "web-host")
    }
    static func userKey() throws -> SSHKeyPair {
        try SSHKeyPair(seed: [UInt8](repeating: 9, count: 32), comment: "nimbus@host")
    }

    /// Every option of InstanceConfig set once.
    static func fullConfig() throws -> InstanceConfig {
        var config = InstanceConfig()
        config.hostname = "web"
        config.domain = "example.test"
        config.locale = "en_US.UTF-8"
        config.timezone = "Europe/Paris"
        config.defaultUser = InstanceConfig.User(name: "nimbus", sshAuthorizedKeys: [try userKey().publicKeyLine])
        config.hostKeys = InstanceConfig.HostKeys(ed25519: try hostKey())
        config.users = [
            InstanceConfig.User(
                name: "alice", sshAuthorizedKeys: [try userKey().publicKeyLine], groups: ["adm", "sudo"])
        ]
        config.mounts = [["/dev/vdb", "/srv/data", "ext4", "defaults,nofail", "0", "2"]]
        config.mountDefaultFields = ["None", "None", "auto", "defaults,nofail", "0", "2"]
        config.swap = InstanceConfig.Swap(filename: "/swapfile", size: "268435456")
        config.packages = ["htop", "jq"]
        config.packageUpdate = true
        config.packageUpgrade = false
        config.bootcmd = [.shell("echo booting > /run/nimbus-boot")]
        config.runcmd = [.shell("echo done > /var/tmp/runcmd"), .arguments(["touch", "/var/tmp/it's here"])]
        config.writeFiles = [
            InstanceConfig.WriteFile(
                path: "/etc/nimbus/hello.txt", content: "hello\nworld\n", owner: "root:root", permissions: "0640"),
            InstanceConfig.WriteFile(
                path: "/etc/nimbus/blob", content: "aGVsbG8=", encoding: "b64", permissions: "0600"),
            InstanceConfig.WriteFile(path: "/etc/motd", content: "appended\n", append: true),
        ]
        config.phoneHome = InstanceConfig.PhoneHome(
            url: "http://10.0.2.2:8000/$INSTANCE_ID/", post: ["pub_key_ed25519", "instance_id"], tries: 3)
        config.powerState = InstanceConfig.PowerState(
            mode: "reboot", delay: "now", message: "rebooting", timeout: 30, condition: "true")
        config.network = InstanceConfig.Network(interfaces: [
            .init(macAddress: "52:54:00:12:34:56"),
            .init(
                name: "data0", macAddress: "52:54:00:AB:CD:EF", addresses: ["192.168.50.10/24"],
                gateway4: "192.168.50.1",
                nameservers: ["192.168.50.1"], searchDomains: ["example.test"]),
        ])
        return config
    }

    static var resources: URL {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().appending(path: "Resources")
    }

    /// Compares `text` with Resources/golden/`name`; NIMBUS_UPDATE_GOLDEN=1 rewrites it.
    static func expectGolden(_ bytes: [UInt8], _ name: String, sourceLocation: SourceLocation = #_sourceLocation) throws
    {
        let url = resources.appending(path: "golden/\(name)")
        if ProcessInfo.processInfo.environment["NIMBUS_UPDATE_GOLDEN"] == "1" {
            try Data(bytes).write(to: url)
        }
        let golden = try [UInt8](Data(contentsOf: url))
        let same = golden == bytes
        #expect(
            same, "\(name) differs from its golden file:\n\(String(decoding: bytes, as: UTF8.self))",
            sourceLocation: sourceLocation)
    }
}

/// Runs a program, returning its exit status and combined output.
@discardableResult
func runProgram(_ path: String, _ arguments: [String], input: Data? = nil) throws -> (status: Int32, output: String) {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: path)
    process.arguments = arguments
    let pipe = Pipe()
    process.standardOutput = pipe
    process.standardError = pipe
    let stdin = Pipe()
    process.standardInput = stdin
    try process.run()
    if let input { stdin.fileHandleForWriting.write(input) }
    try stdin.fileHandleForWriting.close()
    let data = pipe.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    return (process.terminationStatus, String(decoding: data, as: UTF8.self))
}

/// `cloud-init schema --config-file`: exit 0 and "Valid cloud-config" (22.4 exits 1 on schema errors).
func expectValidCloudConfig(_ bytes: [UInt8], sourceLocation: SourceLocation = #_sourceLocation) throws {
    let directory = try TemporaryDirectory("schema")
    defer { directory.remove() }
    let file = directory.url.appending(path: "config.yaml")
    try Data(bytes).write(to: file)
    let result = try runProgram("/usr/bin/cloud-init", ["schema", "--config-file", file.path])
    #expect(
        result.status == 0 && result.output.contains("Valid cloud-config"),
        "cloud-init schema rejected:\n\(String(decoding: bytes, as: UTF8.self))\n\(result.output)",
        sourceLocation: sourceLocation)
}

/// Debian's `ignition-validate` (Ignition 2.14: specs 3.0.0 to 3.3.0, 3.4.0 only as `3.4.0-experimental`),
/// as the config is written: no version rewritten, so a config declaring a spec this Ignition does not
/// know fails here as it would fail at boot.
func expectValidIgnition(_ json: String, sourceLocation: SourceLocation = #_sourceLocation) throws {
    let directory = try TemporaryDirectory("ignition")
    defer { directory.remove() }
    let file = directory.url.appending(path: "config.ign")
    try Data(json.utf8).write(to: file)
    let result = try runProgram("/usr/bin/ignition-validate", [file.path])
    #expect(
        result.status == 0, "ignition-validate rejected:\n\(json)\n\(result.output)", sourceLocation: sourceLocation)
}
