import ArgumentParser
import Foundation
import NimbusCore
import NimbusInstances

/// `nimbus logs NAME [--follow]`: the serial console log.
struct AccessLogs: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "logs", abstract: "Print an instance's serial console log.")

    @OptionGroup var global: Flags.Global
    @OptionGroup var instance: Flags.Instance

    @Flag(name: .shortAndLong, help: "Keep printing what the guest writes, until interrupted.")
    var follow = false

    func run() async throws {
        let context = try CommandContext(global: global)
        let log = try InstanceStore(paths: context.paths).requireExisting(try instance.instanceName).serialLog
        guard let handle = try? FileHandle(forReadingFrom: log) else {
            throw NimbusError(.notFound, "\(instance.name) has no serial log yet: it has not been started")
        }
        defer { try? handle.close() }
        while true {
            let data = handle.readDataToEndOfFile()
            if !data.isEmpty { FileHandle.standardOutput.write(data) }
            guard follow else { return }
            try await Task.sleep(for: .milliseconds(250))
        }
    }
}
