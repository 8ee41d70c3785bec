import ArgumentParser
import Foundation
import NimbusCore
import NimbusInstances

/// `nimbus copy SRC... DST`, with `NAME:path` on one side.
struct AccessCopy: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "copy", abstract: "Copy files between the host and an instance (NAME:path on one side).")

    @OptionGroup var global: Flags.Global

    @Argument(help: "Sources, then the destination; guest paths are written NAME:path.")
    var paths: [String] = []

    @Flag(name: .shortAndLong, help: "Copy folders recursively.")
    var recursive = false

    /// Splits `NAME:path` (a host path with a colon must be written ./a:b).
    static func guestPath(_ text: String) -> (String, String)? {
        guard !text.hasPrefix("/"), !text.hasPrefix("."), let colon = text.firstIndex(of: ":") else { return nil }
        return (String(text[..<colon]), String(text[text.index(after: colon)...]))
    }

    func validate() throws {
        try validating {
            guard paths.count >= 2 else { throw ValidationError("give at least one source and a destination") }
            let names = Set(paths.compactMap { Self.guestPath($0)?.0 })
            guard names.count == 1 else {
                throw ValidationError(
                    "name exactly one instance, as NAME:path, on one side, like: nimbus copy ./a web:/tmp/")
            }
            let destinationIsGuest = Self.guestPath(paths[paths.count - 1]) != nil
            guard paths.dropLast().allSatisfy({ (Self.guestPath($0) != nil) != destinationIsGuest }) else {
                throw ValidationError("copy either from the host to an instance or from an instance to the host")
            }
            for name in names { _ = try InstanceName(name) }
        }
    }

    func run() async throws {
        let context = try CommandContext(global: global)
        let name = try InstanceName(paths.compactMap { Self.guestPath($0)?.0 }.first ?? "")
        let ssh = try await context.manager.sshAccess(name)
        try ssh.prepare()
        let local = { (text: String) in Self.guestPath(text).map { ":" + $0.1 } ?? text }
        let arguments = ssh.scpArguments(
            sources: paths.dropLast().map(local), destination: local(paths[paths.count - 1]), recursive: recursive)
        throw SSHAccess.execReplacingProcess("scp", arguments)
    }
}
