import NimbusCore

/// An instance's name: one RFC 1123 hostname label, so it can be the guest's hostname, a folder name and a
/// libvirt domain name without escaping.
public struct InstanceName: Hashable, Sendable, Comparable, Codable, CustomStringConvertible {
    /// The name as text: 1 to 63 of a-z, 0-9 and '-', '-' neither first nor last.
    public let rawValue: String

    /// Validates `text`; the error says what is allowed.
    public init(_ text: String) throws(NimbusError) {
        guard !text.isEmpty else {
            throw NimbusError(.invalidArgument, "an instance name cannot be empty: use a-z, 0-9 and '-'")
        }
        guard text.count <= 63 else {
            throw NimbusError(
                .invalidArgument,
                "instance name \"\(text)\" is \(text.count) characters long: a hostname label has at most 63")
        }
        let allowed = text.unicodeScalars.allSatisfy {
            ("a"..."z").contains($0) || ("0"..."9").contains($0) || $0 == "-"
        }
        guard allowed, text.first != "-", text.last != "-" else {
            throw NimbusError(
                .invalidArgument,
                "instance name \"\(text)\" is not a valid hostname: use a-z, 0-9 and '-', "
                    + "neither first nor last")
        }
        rawValue = text
    }

    public var description: String { rawValue }

    /// Orders names by their text, as `list` shows them.
    public static func < (lhs: InstanceName, rhs: InstanceName) -> Bool { lhs.rawValue < rhs.rawValue }

    public init(from decoder: any Decoder) throws {
        self = try InstanceName(try decoder.singleValueContainer().decode(String.self))
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(rawValue)
    }

    /// A fresh two-word name, like Multipass's (`brisk-heron`), that is not in `taken`.
    public static func generate(avoiding taken: Set<String> = []) -> InstanceName {
        let adjectives = [
            "able", "amber", "bold", "brave", "brisk", "calm", "clever", "cosy", "crisp", "deft", "eager", "fair",
            "fleet", "gentle", "glad", "grand", "hardy", "keen", "kind", "lively", "lucid", "merry", "mellow",
            "nimble", "noble", "plucky", "proud", "quick", "quiet", "rapid", "sharp", "shiny", "snug", "spry",
            "steady", "sunny", "swift", "tidy", "vivid", "witty",
        ]
        let nouns = [
            "alder", "badger", "beacon", "birch", "bison", "cedar", "comet", "crane", "delta", "falcon", "fern",
            "finch", "fjord", "gecko", "harbor", "heron", "ibis", "jackal", "kestrel", "lark", "lynx", "maple",
            "marten", "meadow", "newt", "otter", "owl", "pine", "plover", "quail", "raven", "reef", "robin",
            "sparrow", "spruce", "stoat", "tern", "trout", "walrus", "wren",
        ]
        while true {
            let candidate = "\(adjectives.randomElement() ?? "swift")-\(nouns.randomElement() ?? "otter")"
            if !taken.contains(candidate), let name = try? InstanceName(candidate) { return name }
        }
    }
}
