import Foundation
import Yams

/// Building and emitting YAML documents whose key order we choose, so rendered files are stable and read
/// the way the cloud-init documentation writes them.
enum YAML {
    static func string(_ value: String) -> Node {
        if value.contains("\n") { return .scalar(.init(value, Tag(.str), .literal)) }
        return .scalar(.init(value, Tag(.str), needsQuotes(value) ? .doubleQuoted : .plain))
    }

    static func bool(_ value: Bool) -> Node { .scalar(.init(value ? "true" : "false", Tag(.bool), .plain)) }
    static func int(_ value: Int) -> Node { .scalar(.init(String(value), Tag(.int), .plain)) }
    static func strings(_ values: [String]) -> Node { .sequence(.init(values.map(string))) }
    static func sequence(_ values: [Node]) -> Node { .sequence(.init(values)) }

    /// A mapping in the given order; nil values are left out.
    static func mapping(_ pairs: [(String, Node?)]) -> Node {
        .mapping(.init(pairs.compactMap { key, value in value.map { (string(key), $0) } }))
    }

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

    /// Parses `text` from `file`; a syntax error names file:line:column.
    static func parse(_ text: String, file: String) throws(SeedError) -> Node? {
        do {
            return try Yams.compose(yaml: text)
        } catch let error as YamlError {
            throw locate(error, file: file)
        } catch {
            throw .invalidYAML(file: file, line: 1, column: 1, problem: String(describing: error))
        }
    }

    static func locate(_ error: YamlError, file: String) -> SeedError {
        switch error {
        case .scanner(let context, let problem, let mark, _):
            return .invalidYAML(
                file: file, line: mark.line, column: mark.column,
                problem: [context?.text, problem].compactMap { $0 }.filter { !$0.isEmpty }.joined(separator: " "))
        case .parser(let context, let problem, let mark, _):
            return .invalidYAML(
                file: file, line: mark.line, column: mark.column,
                problem: [context?.text, problem].compactMap { $0 }.filter { !$0.isEmpty }.joined(separator: " "))
        case .composer(let context, let problem, let mark, _):
            return .invalidYAML(
                file: file, line: mark.line, column: mark.column,
                problem: [context?.text, problem].compactMap { $0 }.filter { !$0.isEmpty }.joined(separator: " "))
        default:
            return .invalidYAML(file: file, line: 1, column: 1, problem: String(describing: error))
        }
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
