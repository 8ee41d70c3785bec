import Foundation
import NimbusCore
import NimbusMachines
import NimbusSeed
import Yams

/// The installation's defaults, from `config.yaml` (NimbusPaths.configFile). Every key is optional; a
/// missing file means all defaults.
///
/// ```yaml
/// image: ubuntu:lts
/// cpus: 2
/// memory: 2G
/// disk: 10G
/// driver: qemu
/// accelerator: auto
/// firmware: auto          # or uefi, bios
/// cpu-model: max          # optional: QEMU's -cpu for new instances
/// mirrors: { ubuntu: https://…, debian: https://…, fedora-coreos: https://… }
/// ```
public struct NimbusConfig: Codable, Sendable, Equatable {
    /// The image new instances are launched from; `ubuntu:lts` unless set.
    public var image: String = "ubuntu:lts"
    /// Virtual CPUs of a new instance; 2 unless set.
    public var cpus: Int = 2
    /// Memory of a new instance; 2 GiB unless set.
    public var memory: ByteSize = .gibibytes(2)
    /// The disk size of a new instance; 10 GiB unless set.
    public var disk: ByteSize = .gibibytes(10)
    /// The driver new instances run on, `qemu` or `libvirt`; `qemu` unless set.
    public var driver: DriverKind = .qemu
    /// The accelerator new instances ask for, `auto`, `kvm` or `tcg`; `auto` unless set.
    public var accelerator: AcceleratorChoice = .auto
    /// The firmware new instances boot, `auto`, `uefi` or `bios`; `auto` unless set.
    public var firmware: FirmwareChoice = .auto
    /// QEMU's `-cpu` for new instances; nil for the accelerator's default.
    public var cpuModel: String?
    /// Seconds `stop` waits for the guest to power off before it forces it.
    public var stopTimeout: Int = 60

    /// The built-in defaults, as with no config.yaml.
    public init() {}

    enum CodingKeys: String, CodingKey {
        case image, cpus, memory, disk, driver, accelerator, firmware
        case stopTimeout = "stop-timeout"
        case cpuModel = "cpu-model"
    }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        let d = NimbusConfig()
        image = try c.decodeIfPresent(String.self, forKey: .image) ?? d.image
        cpus = try c.decodeIfPresent(Int.self, forKey: .cpus) ?? d.cpus
        memory = try c.decodeIfPresent(ByteSize.self, forKey: .memory) ?? d.memory
        disk = try c.decodeIfPresent(ByteSize.self, forKey: .disk) ?? d.disk
        driver = try Self.decodeChoice(c, .driver) ?? d.driver
        accelerator = try Self.decodeChoice(c, .accelerator) ?? d.accelerator
        firmware = try Self.decodeChoice(c, .firmware) ?? d.firmware
        stopTimeout = try c.decodeIfPresent(Int.self, forKey: .stopTimeout) ?? d.stopTimeout
        cpuModel = try c.decodeIfPresent(String.self, forKey: .cpuModel)
    }

    /// A key whose value must be one of an enum's, with an error that lists them.
    static func decodeChoice<Choice: RawRepresentable & CaseIterable>(
        _ container: KeyedDecodingContainer<CodingKeys>, _ key: CodingKeys
    ) throws -> Choice? where Choice.RawValue == String {
        guard let text = try container.decodeIfPresent(String.self, forKey: key) else { return nil }
        guard let choice = Choice(rawValue: text) else {
            let names = Choice.allCases.map(\.rawValue).joined(separator: ", ")
            throw DecodingError.dataCorruptedError(
                forKey: key, in: container, debugDescription: "\"\(text)\" is not one of \(names)")
        }
        return choice
    }

    /// Reads the configuration; a missing file gives the defaults, a broken one an error naming the file and
    /// the line.
    public static func load(paths: NimbusPaths) throws(NimbusError) -> NimbusConfig {
        let url = paths.configFile
        guard let text = try? String(contentsOf: url, encoding: .utf8) else { return NimbusConfig() }
        if text.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty { return NimbusConfig() }
        do {
            return try YAMLDecoder().decode(NimbusConfig.self, from: text)
        } catch  where yamlError(in: error) != nil {
            throw NimbusError(
                .invalidArgument,
                "\(url.path) is not valid YAML (\(describeDamage(error))): mend it, or move it aside to use the defaults",
                cause: error)
        } catch let error as NimbusError {
            throw NimbusError(.invalidArgument, "\(url.path): \(error.message)", cause: error)
        } catch let error as DecodingError {
            throw NimbusError(.invalidArgument, "\(url.path): \(describe(error))", cause: error)
        } catch {
            throw NimbusError(.invalidArgument, "\(url.path) could not be read", cause: error)
        }
    }

    /// Why a file Nimbus wrote (or config.yaml) did not load, in one line: the YAML or JSON error with its
    /// place, a key's problem, or that the file is empty.
    public static func describeDamage(_ error: any Error) -> String {
        let text: String
        if let error = yamlError(in: error),
            case .invalidYAML(_, let line, let column, let problem) = SeedError(yaml: error, file: "")
        {
            text = "line \(line), column \(column): \(problem)"
        } else if case DecodingError.dataCorrupted(let context) = error, context.codingPath.isEmpty {
            let underlying = (context.underlyingError as NSError?)?.userInfo[NSDebugDescriptionErrorKey] as? String
            text = underlying ?? context.debugDescription
        } else if let error = error as? DecodingError {
            text = describe(error)
        } else {
            text = (error as NSError).localizedDescription
        }
        let line = text.split(whereSeparator: \.isNewline).map { $0.trimmingCharacters(in: .whitespaces) }
            .filter { !$0.isEmpty }.joined(separator: " ")
        return line.isEmpty ? "empty" : line
    }

    /// The YAML syntax error in `error`: Yams's own, or the one its decoder wraps.
    static func yamlError(in error: any Error) -> YamlError? {
        if let error = error as? YamlError { return error }
        if case DecodingError.dataCorrupted(let context) = error { return context.underlyingError as? YamlError }
        return nil
    }

    /// A decoding error as `key: problem`.
    static func describe(_ error: DecodingError) -> String {
        func path(_ context: DecodingError.Context) -> String {
            context.codingPath.map(\.stringValue).joined(separator: ".")
        }
        switch error {
        case .typeMismatch(_, let context), .valueNotFound(_, let context), .dataCorrupted(let context):
            let detail = (context.underlyingError as? NimbusError)?.message ?? context.debugDescription
            let key = path(context)
            return key.isEmpty ? detail : "\(key): \(detail)"
        case .keyNotFound(let key, let context):
            return "\(path(context)): missing key \(key.stringValue)"
        @unknown default:
            return "\(error)"
        }
    }
}
