import ArgumentParser
import Foundation
import NimbusCore

extension NimbusCommand {
    /// Parses, runs, and maps failures to exit statuses in one place: a `NimbusError` exits with its code's
    /// status and prints `nimbus: message` (no usage text: the arguments were fine, the work failed).
    public static func main() async {
        do {
            var command = try parseAsRoot()
            if var asyncCommand = command as? any AsyncParsableCommand {
                try await asyncCommand.run()
            } else {
                try command.run()
            }
        } catch let error as NimbusError {
            FileHandle.standardError.write(Data("nimbus: \(error.description)\n".utf8))
            Foundation.exit(error.code.exitStatus)
        } catch let error as AggregateError {
            FileHandle.standardError.write(Data("nimbus: \(error.failures.count) failed:\n\(error.description)\n".utf8))
            Foundation.exit(error.failures.first?.1.code.exitStatus ?? 1)
        } catch {
            exit(withError: error)
        }
    }
}
