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
        let name = try instance.instanceName
        var offset: UInt64 = 0
        while true {
            let chunk = try await context.manager.serialLog(name, from: offset)
            if !chunk.data.isEmpty { FileHandle.standardOutput.write(chunk.data) }
            offset = chunk.next
            guard follow else { return }
            try await Task.sleep(for: .milliseconds(250))
        }
    }
}
