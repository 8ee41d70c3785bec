import Foundation
import NimbusCore
import Testing

@testable import NimbusCommands
@testable import NimbusInstances

/// `nimbus list`'s table: instances of both drivers in one table, with where each runs.
@Suite("Instance table")
struct InstanceTableTests {
    static func info(_ name: String, _ state: InstanceInfo.State, driver: String, host: String) -> InstanceInfo {
        InstanceInfo(
            name: name, state: state, image: "debian:12", imageVersion: nil, ipv4: [], ssh: nil, cpus: 2,
            memory: .gibibytes(1), diskUsed: nil, diskSize: .gibibytes(10), accelerator: "tcg",
            acceleratorReason: nil, uptime: nil, cloudInit: nil, driver: driver, host: host, forwards: [],
            error: nil)
    }

    @Test("QEMU and libvirt instances share one table with DRIVER and HOST columns; a lost one is missing")
    func bothDrivers() throws {
        let table = try InstanceTable.render(
            [
                Self.info("api", .running, driver: "qemu", host: "local"),
                Self.info("db", .stopped, driver: "libvirt", host: "local"),
                Self.info("edge", .missing, driver: "libvirt", host: "rack1.example"),
            ], format: .table)
        let lines = table.split(separator: "\n").map(String.init)
        #expect(lines.first?.hasSuffix("DRIVER   HOST") == true, "\(table)")
        #expect(lines[1].hasSuffix("qemu     local"), "\(table)")
        #expect(lines[2].hasSuffix("libvirt  local"), "\(table)")
        #expect(lines[3].contains("missing") && lines[3].hasSuffix("libvirt  rack1.example"), "\(table)")
        let csv = try InstanceTable.render([Self.info("db", .stopped, driver: "libvirt", host: "local")], format: .csv)
        #expect(csv.hasPrefix("name,state,image,ipv4,ssh,cpus,memory,disk,accel,uptime,cloud-init,driver,host\n"))
    }
}
