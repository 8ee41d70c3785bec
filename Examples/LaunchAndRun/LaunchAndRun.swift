import Foundation
import NimbusCore
import NimbusDrivers
import NimbusInstances

/// Nimbus as a library: launches an instance from an image, runs one command in it over SSH, prints what
/// the command printed, and deletes the instance, through the public API of `NimbusInstances` alone.
///
///     swift run LaunchAndRun IMAGE [COMMAND ARGUMENT...]
///
/// IMAGE is what `nimbus launch` takes (`debian:12`, `file:///path/to/image.qcow2`); COMMAND defaults to
/// `uname -a`. The instance lives under the same folders as the `nimbus` command's (`NIMBUS_HOME` moves
/// them), so `nimbus list` shows it while it runs.
@main
struct LaunchAndRun {
    static func main() async {
        let arguments = Array(CommandLine.arguments.dropFirst())
        guard let image = arguments.first else {
            FileHandle.standardError.write(Data("usage: LaunchAndRun IMAGE [COMMAND ARGUMENT...]\n".utf8))
            exit(64)
        }
        let command = arguments.count > 1 ? Array(arguments.dropFirst()) : ["uname", "-a"]
        do {
            exit(try await run(image: image, command: command))
        } catch {
            let nimbusError = error as? NimbusError
            FileHandle.standardError.write(Data("LaunchAndRun: \(nimbusError?.message ?? "\(error)")\n".utf8))
            exit(nimbusError?.code.exitStatus ?? 1)
        }
    }

    /// Launches, runs `command`, deletes; returns the command's exit status.
    static func run(image: String, command: [String]) async throws -> Int32 {
        let paths = NimbusPaths.resolve()
        let config = try NimbusConfig.load(paths: paths)
        let manager = InstanceManager(paths: paths, config: config) { message in
            FileHandle.standardError.write(Data("\(message)\n".utf8))
        }
        let name = InstanceName.generate(avoiding: Set(manager.store.names().map(\.rawValue)))
        var spec = InstanceSpec(name: name, image: image, defaults: config)
        spec.memory = .mebibytes(1024)
        spec.hostname = "example"

        _ = try await manager.launch(spec, wait: true, timeout: .seconds(900))
        let result: Result<ProgramOutput, any Error>
        do {
            result = .success(try await manager.sshAccess(name).run(command))
        } catch {
            result = .failure(error)
        }
        // Deleted whatever the command did, so the example leaves nothing behind.
        try await manager.delete(name, purge: true)
        let output = try result.get()
        FileHandle.standardOutput.write(Data(output.standardOutput.utf8))
        FileHandle.standardError.write(Data(output.standardError.utf8))
        return output.status
    }
}
