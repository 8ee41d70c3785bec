import Foundation
import Yams

/// Building and emitting YAML documents whose key order we choose, so rendered files are stable and read
/// the way the cloud-init documentation writes them.
///
/// Every node built or parsed here carries a tag whose resolver is `Resolver.basic`: Yams's
/// `Resolver.default` (also the default argument of `Tag.init` and `Tag.implicit`) compiles regular
/// expressions on first use, which costs more than the rest of `nimbus seed` (see `YAML11Resolution`).
enum YAML {
    /// A tag that never needs a resolver's rules.
    static func tag(_ name: Tag.Name) -> Tag { Tag(name, .basic, .default) }

    static func string(_ value: String) -> Node {
        if value.contains("\n") { return .scalar(.init(value, tag(.str), .literal)) }
        return .scalar(.init(value, tag(.str), needsQuotes(value) ? .doubleQuoted : .plain))
    }

    static func bool(_ value: Bool) -> Node { .scalar(.init(value ? "true" : "false", tag(.bool), .plain)) }
    static func int(_ value: Int) -> Node { .scalar(.init(String(value), tag(.int), .plain)) }
    static func strings(_ values: [String]) -> Node { sequence(values.map(string)) }
    static func sequence(_ values: [Node]) -> Node { .sequence(.init(values, tag(.seq))) }

    /// A mapping in the given order; nil values are left out.
    static func mapping(_ pairs: [(String, Node?)]) -> Node {
        mapping(nodePairs: pairs.compactMap { key, value in value.map { (string(key), $0) } })
    }

    static func mapping(nodePairs: [(Node, Node)]) -> Node { .mapping(.init(nodePairs, tag(.map))) }

    /// Plain scalars that YAML 1.1 or 1.2 would read as something other than this string.
    static func needsQuotes(_ value: String) -> Bool {
        if value.isEmpty { return true }
        let lower = value.lowercased()
        if ["true", "false", "yes", "no", "on", "off", "y", "n", "null", "~"].contains(lower) { return true }
        if let first = value.first,
            first.isNumber || ((first == "-" || first == "+" || first == ".") && value.count > 1)
        {
            return true
        }
        return false
    }

    static func emit(_ node: Node, header: String? = nil) throws(SeedError) -> String {
        let body: String
        do {
            body = try Yams.serialize(node: node, indent: 2, width: -1, allowUnicode: true, lineBreak: .ln)
        } catch {
            throw .invalidValue("could not render YAML: \(error)")
        }
        return (header.map { $0 + "\n" } ?? "") + body
    }

    /// Parses `text` from `file`; a syntax error names file:line:column. Plain scalars are typed by YAML 1.1's
    /// rules (`yes`, `on` are booleans, `0644` an integer), as Yams's `Resolver.default` and PyYAML do.
    static func parse(_ text: String, file: String) throws(SeedError) -> Node? {
        // Fast path: no rules while parsing, then YAML 1.1 tags given without regular expressions. Where the
        // resolver could make a difference inside the parser (keys with the same text: `1` and `"1"` are
        // distinct only when typed; keys YAML 1.1 types other than `str`; complex keys; anchors: a key's node
        // shared as a value), parse again with `Resolver.default`, so the result is always the one it gives.
        let basic: Node?
        do {
            basic = try Yams.compose(yaml: text, .basic, .default, .utf8)
        } catch YamlError.duplicatedKeysInMapping {
            return try compose(text, resolver: .default, file: file)
        } catch {
            throw seedError(error, file: file)
        }
        guard let basic else { return nil }
        if let typed = typedWithoutResolver(basic) { return typed }
        return try compose(text, resolver: .default, file: file)
    }

    /// Yams's parse of `text` with `resolver`; its errors as `SeedError`s naming file:line:column.
    private static func compose(_ text: String, resolver: Resolver, file: String) throws(SeedError) -> Node? {
        do {
            return try Yams.compose(yaml: text, resolver, .default, .utf8)
        } catch {
            throw seedError(error, file: file)
        }
    }

    private static func seedError(_ error: any Error, file: String) -> SeedError {
        if let error = error as? YamlError { return SeedError(yaml: error, file: file) }
        return .invalidYAML(file: file, line: 1, column: 1, problem: String(describing: error))
    }

    /// `node`, parsed with `Resolver.basic`, with each untyped scalar given the tag `Resolver.default` would
    /// give it; nil when the document needs `Resolver.default` in the parser itself (see `parse`).
    ///
    /// Mapping keys were already typed `str` by the parser's duplicate check (hashing a node resolves its
    /// tag); that is right for every key YAML 1.1 also types `str`, and the others (rare in cloud-config)
    /// go to `Resolver.default`. Values keep any tag written in the document.
    static func typedWithoutResolver(_ node: Node) -> Node? {
        func typed(_ node: Node, isKey: Bool) -> Node? {
            switch node {
            case .scalar(var scalar):
                if scalar.anchor != nil { return nil }
                let name = scalar.tag.rawValue  // the tag as written or as the parser typed it: not resolved
                if name == Tag.Name.implicit.rawValue {
                    scalar.tag = tag(YAML11Resolution.tag(of: scalar.string))
                } else if isKey, scalar.style == .plain, name == Tag.Name.str.rawValue,
                    YAML11Resolution.tag(of: scalar.string) != .str
                {
                    // A plain key the duplicate check typed `str` that YAML 1.1 types otherwise (`1:`,
                    // `yes:`): whether it was written `!!str` is lost, so `Resolver.default` decides.
                    return nil
                }
                return .scalar(scalar)
            case .sequence(let sequence):
                if sequence.anchor != nil { return nil }
                var items: [Node] = []
                items.reserveCapacity(sequence.count)
                for item in sequence {
                    guard let item = typed(item, isKey: false) else { return nil }
                    items.append(item)
                }
                return .sequence(.init(items, sequence.tag, sequence.style, sequence.mark))
            case .mapping(let mapping):
                if mapping.anchor != nil { return nil }
                var pairs: [(Node, Node)] = []
                pairs.reserveCapacity(mapping.count)
                var scalarKeys = Set<String>()
                for (key, value) in mapping {
                    // Keys the basic parse kept apart are apart under any resolver; keys with the same text
                    // might be equal only once typed, so leave those to `Resolver.default`, and complex keys
                    // too (the duplicate check typed the scalars inside them `str`).
                    guard case .scalar(let scalar) = key, scalarKeys.insert(scalar.string).inserted else {
                        return nil
                    }
                    guard let key = typed(key, isKey: true), let value = typed(value, isKey: false) else { return nil }
                    pairs.append((key, value))
                }
                return .mapping(.init(pairs, mapping.tag, mapping.style, mapping.mark))
            case .alias:
                return nil
            }
        }
        return typed(node, isKey: false)
    }

    static func kind(_ node: Node) -> String {
        switch node {
        case .scalar: return "a scalar"
        case .mapping: return "a mapping"
        case .sequence: return "a sequence"
        case .alias: return "an alias"
        }
    }
}
