import Foundation
import NimbusCore
import NimbusQMP
import Testing

@testable import NimbusMachines
@testable import NimbusQEMU

/// The Nimbus side of bench/machine; runs only when the script sets NIMBUS_BENCH_MACHINE.
///
/// - `noop`: nothing (measures the test binary's own start-up, to subtract).
/// - `start`: one `QEMUDriver.start` of `$NIMBUS_BENCH_DIR/config.json`, then `quit` over QMP.
/// - `inprocess`: N starts by Nimbus and N by the bare steps (run QEMU, connect QMP, query-status) in this
///   process, printing the mean of each and the RSS of an idle instance.
@Suite(
    "Machine start benchmark",
    .enabled(
        if: ProcessInfo.processInfo.environment["NIMBUS_BENCH_MACHINE"] != nil,
        "runs only from bench/machine (NIMBUS_BENCH_MACHINE)"))
struct MachineStartBench {
    @Test("bench: start a machine until QMP answers")
    func start() async throws {
        let environment = ProcessInfo.processInfo.environment
        let mode = environment["NIMBUS_BENCH_MACHINE"] ?? "noop"
        if mode == "noop" { return }
        let folder = URL(fileURLWithPath: try #require(environment["NIMBUS_BENCH_DIR"]))
        let config = try JSONDecoder().decode(
            MachineConfig.self, from: Data(contentsOf: folder.appending(path: "config.json")))
        let directory = MachineDirectory(folder.appending(path: "nimbus"))
        let driver = QEMUDriver(hostFactsCache: folder.appending(path: "host"))

        func quit() async throws {
            let client = try await QEMUDriver.connect(directory)
            try await client.quit()
            await client.waitUntilClosed()
            if let process = QEMUProcess.find(in: directory) { _ = await process.waitForExit(timeout: .seconds(10)) }
        }

        if mode == "start" {
            _ = try await driver.start(config, in: directory)
            try await quit()
            return
        }

        let runs = Int(environment["NIMBUS_BENCH_RUNS"] ?? "10") ?? 10
        let clock = ContinuousClock()
        var nimbus: [Duration] = []
        var bare: [Duration] = []
        var rss: [UInt64] = []
        for _ in 0..<runs {
            let started = clock.now
            let machine = try await driver.start(config, in: directory)
            nimbus.append(clock.now - started)
            if let bytes = QEMUProcess(pid: machine.pid).residentBytes { rss.append(bytes) }
            try await quit()

            // The same argv, with nothing of Nimbus around it: run QEMU, connect, query-status.
            let argv = machine.commandLine
            let bareStarted = clock.now
            let result = try await ProgramRunner.output(
                argv[0], Array(argv.dropFirst()), workingDirectory: directory.url)
            try #require(result.status == 0, "\(result.standardError)")
            let client = try await QMPClient.connect(path: directory.qmpSocket.path)
            _ = try await client.queryStatus()
            bare.append(clock.now - bareStarted)
            try await client.quit()
            await client.waitUntilClosed()
            if let process = QEMUProcess.find(in: directory) { _ = await process.waitForExit(timeout: .seconds(10)) }
        }
        func milliseconds(_ values: [Duration]) -> Double {
            let total = values.reduce(Duration.zero, +)
            return Double(total.components.seconds) * 1e3 / Double(values.count)
                + Double(total.components.attoseconds) / 1e15 / Double(values.count)
        }
        let mean = milliseconds(nimbus)
        let bareMean = milliseconds(bare)
        print(String(format: "BENCH nimbus-start-mean-ms %.1f", mean))
        print(String(format: "BENCH bare-start-mean-ms %.1f", bareMean))
        print(String(format: "BENCH nimbus-added-ms %.1f", mean - bareMean))
        if !rss.isEmpty {
            print(
                String(format: "BENCH rss-at-start-mib %.1f", Double(rss.reduce(0, +)) / Double(rss.count) / 1_048_576))
        }
        // An idle instance a few seconds in, before the guest has touched much memory.
        let machine = try await driver.start(config, in: directory)
        try await Task.sleep(for: .seconds(3))
        if let bytes = QEMUProcess(pid: machine.pid).residentBytes {
            print(String(format: "BENCH rss-after-3s-mib %.1f", Double(bytes) / 1_048_576))
        }
        try await quit()
    }
}
