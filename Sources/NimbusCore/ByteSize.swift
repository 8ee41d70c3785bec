/// A size in bytes, as people write it on a command line: `512M`, `2G`, `2GiB`, `10g`, `1024`.
///
/// Suffixes are binary (K = KiB = 1024), as QEMU and qemu-img read them. Zero, negative and malformed
/// sizes are rejected with a message that says what is accepted.
public struct ByteSize: Hashable, Sendable, Comparable, Codable, CustomStringConvertible {
    /// The size in bytes.
    public let bytes: UInt64

    public init(bytes: UInt64) { self.bytes = bytes }

    public static func mebibytes(_ value: UInt64) -> ByteSize { ByteSize(bytes: value << 20) }
    public static func gibibytes(_ value: UInt64) -> ByteSize { ByteSize(bytes: value << 30) }

    /// Parses `text`; `what` names the value in the error ("memory", "--disk").
    public init(parsing text: String, what: String = "size") throws(NimbusError) {
        let trimmed = text.trimmingCharacters(in: .whitespaces)
        let digits = trimmed.prefix { $0.isASCII && $0.isNumber }
        var unit = trimmed.dropFirst(digits.count).lowercased()
        if unit.hasSuffix("ib") { unit.removeLast(2) } else if unit.hasSuffix("b") { unit.removeLast() }
        let shifts: [String: UInt64] = ["": 0, "k": 10, "m": 20, "g": 30, "t": 40]
        guard !digits.isEmpty, let value = UInt64(digits), let shift = shifts[unit] else {
            throw NimbusError(
                .invalidArgument,
                "\(what) \"\(text)\" is not a size: write a whole number with an optional unit, like 512M, 2G or 10GiB"
            )
        }
        guard value > 0 else {
            throw NimbusError(.invalidArgument, "\(what) \"\(text)\" must be larger than zero")
        }
        let (bytes, overflow) = value.multipliedReportingOverflow(by: 1 << shift)
        guard !overflow else {
            throw NimbusError(.invalidArgument, "\(what) \"\(text)\" is too large")
        }
        self.bytes = bytes
    }

    public static func < (lhs: ByteSize, rhs: ByteSize) -> Bool { lhs.bytes < rhs.bytes }

    /// The shortest exact form: `2G`, `512M`, `1536M`, `1000`.
    public var description: String {
        for (suffix, shift) in [("T", 40), ("G", 30), ("M", 20), ("K", 10)] as [(String, UInt64)]
        where bytes >= 1 << shift && bytes % (1 << shift) == 0 {
            return "\(bytes >> shift)\(suffix)"
        }
        return "\(bytes)"
    }

    /// A rounded form for tables: `1.5 GiB`, `640 MiB`.
    public var humanReadable: String {
        let units = ["B", "KiB", "MiB", "GiB", "TiB"]
        var value = Double(bytes)
        var index = 0
        while value >= 1024, index < units.count - 1 {
            value /= 1024
            index += 1
        }
        if index == 0 { return "\(bytes) B" }
        let rounded = (value * 10).rounded() / 10
        return rounded == rounded.rounded() ? "\(Int(rounded)) \(units[index])" : "\(rounded) \(units[index])"
    }

    public init(from decoder: any Decoder) throws {
        let container = try decoder.singleValueContainer()
        if let bytes = try? container.decode(UInt64.self) {
            self.bytes = bytes
        } else {
            let key = decoder.codingPath.map(\.stringValue).joined(separator: ".")
            self = try ByteSize(parsing: container.decode(String.self), what: key.isEmpty ? "size" : key)
        }
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(description)
    }
}
