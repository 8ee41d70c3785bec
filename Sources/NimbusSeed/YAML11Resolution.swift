import Yams

/// YAML 1.1 implicit typing of plain scalars, exactly as Yams's `Resolver.default` decides it (and as
/// PyYAML, which cloud-init uses, reads `yes`/`no`/`on`/`off` as booleans and `0644` as an integer),
/// without regular expressions.
///
/// Why: `Resolver.default` compiles seven `NSRegularExpression`s on first use, which initialises ICU's
/// regular-expression tables: about 0.8 ms of a 7 ms `nimbus seed` process (perf, bench/RESULTS.md).
/// Nimbus parses with `Resolver.basic` (no rules) and then gives every plain scalar the tag the default
/// rules would have given it, so `Node.bool`, `Node.null`, node equality and `YAMLDecoder` behave as before.
/// The rules below are the patterns of Yams's `Resolver.Rule` (`bool`, `int`, `float`, `merge`, `null`,
/// `timestamp`, `value`), tried in that order; `YAML11ResolutionTests` checks them against
/// `Resolver.default` string by string.
enum YAML11Resolution {
    /// The tag `Resolver.default` gives a plain scalar with this text.
    static func tag(of string: String) -> Tag.Name {
        var bytes = Array(string.utf8)
        // ICU's `$` (NSRegularExpression without options) also matches before one line terminator that
        // ends the input: "\n", "\u{0B}", "\u{0C}", "\r", "\r\n", U+0085, U+2028 or U+2029.
        if bytes.last == 0x0A {
            bytes.removeLast()
            if bytes.last == 0x0D { bytes.removeLast() }
        } else if let last = bytes.last, (0x0B...0x0D).contains(last) {
            bytes.removeLast()
        } else if bytes.count >= 2, bytes[bytes.count - 2] == 0xC2, bytes[bytes.count - 1] == 0x85 {
            bytes.removeLast(2)
        } else if bytes.count >= 3, bytes[bytes.count - 3] == 0xE2, bytes[bytes.count - 2] == 0x80,
            bytes[bytes.count - 1] == 0xA8 || bytes[bytes.count - 1] == 0xA9
        {
            bytes.removeLast(3)
        }
        if isBool(bytes) { return .bool }
        if isInt(bytes) { return .int }
        if isFloat(bytes) { return .float }
        if bytes == [0x3C, 0x3C] { return .merge }  // <<
        if isNull(bytes) { return .null }
        if isTimestamp(bytes) { return .timestamp }
        if bytes == [0x3D] { return .value }  // =
        return .str
    }

    private static let bools: Set<[UInt8]> = Set(
        [
            "yes", "Yes", "YES", "no", "No", "NO", "true", "True", "TRUE", "false", "False", "FALSE", "on", "On", "ON",
            "off", "Off", "OFF",
        ].map { Array($0.utf8) })
    private static let nulls: Set<[UInt8]> = Set(["", "~", "null", "Null", "NULL"].map { Array($0.utf8) })

    static func isBool(_ b: [UInt8]) -> Bool { bools.contains(b) }
    static func isNull(_ b: [UInt8]) -> Bool { nulls.contains(b) }

    /// `^(?:[-+]?0b[0-1_]+|[-+]?0o?[0-7_]+|[-+]?(?:0|[1-9][0-9_]*)|[-+]?0x[0-9a-fA-F_]+|[-+]?[1-9][0-9_]*(?::[0-5]?[0-9])+)$`
    static func isInt(_ b: [UInt8]) -> Bool {
        var s = Scanner(b)
        s.sign()
        let start = s.index
        // 0b[0-1_]+
        if s.literal("0b"), s.many({ $0 == c("0") || $0 == c("1") || $0 == c("_") }) > 0, s.atEnd { return true }
        // 0o?[0-7_]+
        s.index = start
        if s.literal("0") {
            _ = s.literal("o")
            if s.many({ (c("0")...c("7")).contains($0) || $0 == c("_") }) > 0, s.atEnd { return true }
        }
        // 0
        s.index = start
        if s.literal("0"), s.atEnd { return true }
        // 0x[0-9a-fA-F_]+
        s.index = start
        if s.literal("0x"), s.many({ isHex($0) || $0 == c("_") }) > 0, s.atEnd { return true }
        // [1-9][0-9_]* alone, or followed by sexagesimal groups
        s.index = start
        if s.one({ (c("1")...c("9")).contains($0) }) {
            s.many { isDigit($0) || $0 == c("_") }
            if s.atEnd { return true }
            if s.sexagesimalGroups() > 0, s.atEnd { return true }
        }
        return false
    }

    /// `^(?:[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?(?:[eE][-+]?[0-9]+)?|\.[0-9_]+(?:[eE][-+][0-9]+)?`
    /// `|[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+\.[0-9_]*|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$`
    static func isFloat(_ b: [UInt8]) -> Bool {
        var s = Scanner(b)
        // [-+]?[0-9][0-9_]*(\.[0-9_]*)?([eE][-+]?[0-9]+)?
        s.sign()
        if s.one(isDigit) {
            s.many { isDigit($0) || $0 == c("_") }
            let afterDigits = s.index
            if s.literal(".") { s.many { isDigit($0) || $0 == c("_") } }
            if s.exponent(signRequired: false), s.atEnd { return true }
            // [-+]?[0-9][0-9_]*(:[0-5]?[0-9])+\.[0-9_]*
            s.index = afterDigits
            if s.sexagesimalGroups() > 0, s.literal(".") {
                s.many { isDigit($0) || $0 == c("_") }
                if s.atEnd { return true }
            }
        }
        // \.[0-9_]+([eE][-+][0-9]+)?
        s.index = 0
        if s.literal("."), s.many({ isDigit($0) || $0 == c("_") }) > 0, s.exponent(signRequired: true), s.atEnd {
            return true
        }
        // [-+]?\.(inf|Inf|INF)
        s.index = 0
        s.sign()
        if s.literal("."), s.literal("inf") || s.literal("Inf") || s.literal("INF"), s.atEnd { return true }
        // \.(nan|NaN|NAN)
        s.index = 0
        if s.literal("."), s.literal("nan") || s.literal("NaN") || s.literal("NAN"), s.atEnd { return true }
        return false
    }

    /// `^(?:[0-9]{4}-[0-9]{2}-[0-9]{2}|[0-9]{4}-[0-9]{1,2}-[0-9]{1,2}(?:[Tt]|[ \t]+)[0-9]{1,2}:[0-9]{2}:[0-9]{2}`
    /// `(?:\.[0-9]*)?(?:[ \t]*(?:Z|[-+][0-9]{1,2}(?::[0-9]{2})?))?)$` (Yams writes the counts out).
    static func isTimestamp(_ b: [UInt8]) -> Bool {
        var s = Scanner(b)
        guard s.digits(4), s.literal("-") else { return false }
        let month = s.index
        // yyyy-mm-dd
        if s.digits(2), s.literal("-"), s.digits(2), s.atEnd { return true }
        // yyyy-m(m)-d(d)(T|t|[ \t]+)h(h):mm:ss(.f*)?([ \t]*(Z|[-+]h(h)(:mm)?))?
        s.index = month
        guard s.digits(1), s.optionalDigit(), s.literal("-"), s.digits(1), s.optionalDigit() else { return false }
        if !(s.one { $0 == c("T") || $0 == c("t") }) {
            guard s.many({ $0 == c(" ") || $0 == c("\t") }) > 0 else { return false }
        }
        guard s.digits(1), s.optionalDigit(), s.literal(":"), s.digits(2), s.literal(":"), s.digits(2) else {
            return false
        }
        if s.literal(".") { s.many(isDigit) }
        if s.atEnd { return true }
        s.many { $0 == c(" ") || $0 == c("\t") }
        if s.literal("Z") { return s.atEnd }
        guard s.one({ $0 == c("-") || $0 == c("+") }), s.digits(1), s.optionalDigit() else { return false }
        if s.atEnd { return true }
        return s.literal(":") && s.digits(2) && s.atEnd
    }

    private static func c(_ character: Unicode.Scalar) -> UInt8 { UInt8(character.value) }
    private static func isDigit(_ byte: UInt8) -> Bool { byte >= 0x30 && byte <= 0x39 }
    private static func isHex(_ byte: UInt8) -> Bool {
        isDigit(byte) || (byte >= 0x61 && byte <= 0x66) || (byte >= 0x41 && byte <= 0x46)
    }

    /// A cursor over the bytes; every pattern above is matched greedily, which gives the regular
    /// expressions' answers because no repeated class can also start what follows it.
    private struct Scanner {
        let bytes: [UInt8]
        var index = 0
        init(_ bytes: [UInt8]) { self.bytes = bytes }

        var atEnd: Bool { index == bytes.count }

        mutating func one(_ matches: (UInt8) -> Bool) -> Bool {
            guard index < bytes.count, matches(bytes[index]) else { return false }
            index += 1
            return true
        }

        @discardableResult
        mutating func many(_ matches: (UInt8) -> Bool) -> Int {
            let start = index
            while index < bytes.count, matches(bytes[index]) { index += 1 }
            return index - start
        }

        mutating func literal(_ text: StaticString) -> Bool {
            let count = text.utf8CodeUnitCount
            guard bytes.count - index >= count else { return false }
            let matches = text.withUTF8Buffer { expected in
                expected.indices.allSatisfy { bytes[index + $0] == expected[$0] }
            }
            if matches { index += count }
            return matches
        }

        mutating func sign() { _ = one { $0 == 0x2B || $0 == 0x2D } }

        /// Exactly `count` digits.
        mutating func digits(_ count: Int) -> Bool {
            for _ in 0..<count where !one(YAML11Resolution.isDigit) { return false }
            return true
        }

        /// `[0-9]?`: always succeeds.
        mutating func optionalDigit() -> Bool {
            _ = one(YAML11Resolution.isDigit)
            return true
        }

        /// `(?::[0-5]?[0-9])*`, greedy; the number of groups read.
        mutating func sexagesimalGroups() -> Int {
            var groups = 0
            while index + 1 < bytes.count, bytes[index] == 0x3A, YAML11Resolution.isDigit(bytes[index + 1]) {
                index += 2
                if bytes[index - 1] <= 0x35, index < bytes.count, YAML11Resolution.isDigit(bytes[index]) {
                    index += 1
                }
                groups += 1
            }
            return groups
        }

        /// `(?:[eE][-+]?[0-9]+)?` (`[-+]` required when `signRequired`): reads a complete exponent if one
        /// is there, else nothing (an incomplete one is left for the caller's end-of-input check to refuse).
        /// Always true, so it chains in conditions.
        mutating func exponent(signRequired: Bool) -> Bool {
            let start = index
            guard one({ $0 == 0x65 || $0 == 0x45 }) else { return true }
            let signed = one { $0 == 0x2B || $0 == 0x2D }
            if (signRequired && !signed) || many(YAML11Resolution.isDigit) == 0 { index = start }
            return true
        }
    }
}
