import Foundation
import NimbusCore

/// A user's own Ignition config (`nimbus launch --ignition FILE`), kept byte for byte: Nimbus's config
/// merges it with `ignition.config.merge` and a data URL rather than editing it, so what the user wrote is
/// what Ignition reads.
///
/// Checked before anything is written: a JSON object whose `ignition.version` is a 3.x spec (2.x configs
/// are for Ignition 0.x, which no current image runs), and, where Debian's `ignition-validate` is
/// installed, what that says (`validated()`).
public struct UserIgnition: Sendable, Equatable {
    /// The config exactly as given.
    public let text: String
    /// Where it came from, for messages (`config.ign`).
    public let source: String
    /// Its `ignition.version`, like `3.3.0`.
    public let version: String

    public init(text: String, source: String) throws(SeedError) {
        self.text = text
        self.source = source
        let object: Any
        do {
            object = try JSONSerialization.jsonObject(with: Data(text.utf8))
        } catch {
            throw .invalidValue(
                "\(source) is not JSON (\(Self.reason(error))): an Ignition config is a JSON object, like {\"ignition\": {\"version\": \"3.3.0\"}}"
            )
        }
        guard let config = object as? [String: Any] else {
            throw .invalidValue("\(source) is JSON but not an object: an Ignition config is one")
        }
        guard let ignition = config["ignition"] as? [String: Any], let version = ignition["version"] as? String
        else {
            throw .invalidValue("\(source) has no ignition.version: an Ignition config names its spec, like 3.3.0")
        }
        guard let parsed = Self.specVersion(version), parsed.major == 3 else {
            throw .invalidValue(
                "\(source) is Ignition spec \(version); Nimbus takes spec 3.x (3.0.0 to 3.3.0 are read by every current Ignition): convert it with Butane or ign-converter"
            )
        }
        self.version = version
    }

    /// Reads and checks the config in `url`, given as `option` (`--ignition`, `ignition-file`), with errors
    /// naming both.
    public static func read(_ url: URL, option: String) throws(SeedError) -> UserIgnition {
        guard let data = FileManager.default.contents(atPath: url.path) else {
            throw .invalidValue("cannot read \(option) \(url.path): check the path and its permissions")
        }
        guard let text = String(validating: Array(data), as: UTF8.self) else {
            throw .invalidValue("\(option) \(url.path) is not UTF-8 text: an Ignition config is JSON")
        }
        return try UserIgnition(text: text, source: url.path)
    }

    /// (major, minor, patch) of a spec version such as `3.4.0` or `3.4.0-experimental`.
    static func specVersion(_ text: String) -> (major: Int, minor: Int, patch: Int)? {
        let numbers = text.split(separator: "-", maxSplits: 1).first?.split(separator: ".").compactMap { Int($0) } ?? []
        guard numbers.count == 3 else { return nil }
        return (numbers[0], numbers[1], numbers[2])
    }

    /// Whether spec `a` is older than spec `b` (an `-experimental` suffix sorts before its release).
    static func isOlder(_ a: String, than b: String) -> Bool {
        guard let x = specVersion(a), let y = specVersion(b) else { return false }
        if (x.major, x.minor, x.patch) != (y.major, y.minor, y.patch) {
            return (x.major, x.minor, x.patch) < (y.major, y.minor, y.patch)
        }
        return a.contains("-") && !b.contains("-")
    }

    /// This config, checked by `ignition-validate` when it is installed (Debian's `ignition` package); the
    /// config as it is otherwise. Its complaint, quoted, is the error.
    public func validated() async throws(NimbusError) -> UserIgnition {
        guard let validator = ProgramRunner.find("ignition-validate") else { return self }
        let folder = FileManager.default.temporaryDirectory.appending(path: "nimbus-ignition-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: folder) }
        let file = folder.appending(path: "config.ign")
        do {
            try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
            try Data(text.utf8).write(to: file)
        } catch {
            throw NimbusError(.io, "could not write a copy of \(source) to check it", cause: error)
        }
        let result = try await ProgramRunner.output(validator, [file.path])
        guard result.status == 0 else {
            let complaint = (result.standardOutput + result.standardError)
                .replacingOccurrences(of: file.path, with: source)
                .trimmingCharacters(in: .whitespacesAndNewlines)
            throw NimbusError(
                .invalidArgument, "ignition-validate rejects \(source): \(complaint): fix the config and launch again")
        }
        return self
    }

    private static func reason(_ error: any Error) -> String {
        (error as NSError).userInfo[NSDebugDescriptionErrorKey] as? String ?? "\(error)"
    }
}
