import Foundation
import NimbusSeed
import Testing

/// In-process cost of a typical seed (parse + validate + render + ISO bytes), for bench/seed. Runs only
/// with NIMBUS_BENCH=1 and asserts nothing about time: it prints the figures.
@Suite(
    "Seed benchmark",
    .enabled(
        if: ProcessInfo.processInfo.environment["NIMBUS_BENCH"] == "1", "runs only from bench/seed (NIMBUS_BENCH=1)"))
struct SeedBenchmark {
    @Test("render + ISO of a typical seed, median over many runs")
    func renderAndISO() throws {
        let userData = Array(
            """
            #cloud-config
            hostname: bench
            users:
              - name: dev
                sudo: ALL=(ALL) NOPASSWD:ALL
                ssh_authorized_keys: [ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPA/lmdaI4jHKfq2Ev6ymPMA45fCDR2Jnn86VoLICWrB dev]
            write_files: [{path: /etc/motd, content: hi, permissions: '0644'}]
            runcmd: [echo ready]

            """.utf8)
        var config = InstanceConfig()
        config.hostname = "bench"
        config.timezone = "UTC"
        config.defaultUser = InstanceConfig.User(
            name: "nimbus",
            sshAuthorizedKeys: ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPA/lmdaI4jHKfq2Ev6ymPMA45fCDR2Jnn86VoLICWrB n"])
        config.network = InstanceConfig.Network(interfaces: [.init(macAddress: "52:54:00:12:34:56")])
        let date = Date(timeIntervalSince1970: 1_767_225_600)
        var samples: [Double] = []
        var size = 0
        for _ in 0..<2000 {
            let start = ContinuousClock.now
            let user = try UserData(bytes: userData, source: "user-data")
            let seed = try NoCloudSeed(config: config, name: "bench", userData: user)
            size = try seed.isoImage(timestamp: date).bytes().count
            let elapsed = ContinuousClock.now - start
            samples.append(Double(elapsed.components.attoseconds) / 1e12 + Double(elapsed.components.seconds) * 1e6)
        }
        samples.sort()
        let median = samples[samples.count / 2]
        let p90 = samples[samples.count * 9 / 10]
        print(
            "seed-benchmark: render + ISO (\(size) bytes): median \(String(format: "%.1f", median)) µs, p90 \(String(format: "%.1f", p90)) µs over \(samples.count) runs"
        )
        #expect(size > 0)
    }
}
