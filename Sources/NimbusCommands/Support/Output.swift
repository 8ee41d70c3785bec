import Foundation
import Yams

/// Renders results to stdout in the format the user chose.
///
/// Tables are for people; JSON (sorted keys, pretty-printed), YAML and CSV are for programs and keep
/// their shape from release to release.
public enum OutputRenderer {
    /// Rows of named columns: `columns` gives the order (and the table and CSV headers); `rows` the values.
    public static func render<T: Encodable>(
        _ value: T, columns: [String], rows: [[String]], format: OutputFormat
    ) throws -> String {
        switch format {
        case .json:
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
            encoder.dateEncodingStrategy = .iso8601
            // swift-corelibs-foundation pretty-prints an empty array or object over two lines ("[\n\n]"); written
            // `[]` and `{}`, as other JSON printers and jq do. A raw newline never stands inside a JSON string,
            // so only the printer's own layout matches.
            let text = String(decoding: try encoder.encode(value), as: UTF8.self)
            return text.replacing(/\[\n\s*\]/, with: "[]").replacing(/\{\n\s*\}/, with: "{}") + "\n"
        case .yaml:
            let encoder = YAMLEncoder()
            encoder.options.sortKeys = true
            return try encoder.encode(value)
        case .csv:
            return ([columns] + rows).map { $0.map(csvField).joined(separator: ",") }.joined(separator: "\n") + "\n"
        case .table:
            return table(columns: columns, rows: rows)
        }
    }

    /// Left-aligned columns separated by two spaces, headers in capitals.
    public static func table(columns: [String], rows: [[String]]) -> String {
        let all = [columns.map { $0.uppercased() }] + rows
        var widths = [Int](repeating: 0, count: columns.count)
        for row in all {
            for (index, cell) in row.enumerated() where index < widths.count {
                widths[index] = max(widths[index], cell.count)
            }
        }
        return all.map { row in
            row.enumerated().map { index, cell in
                index == row.count - 1 ? cell : cell.padding(toLength: widths[index], withPad: " ", startingAt: 0)
            }.joined(separator: "  ")
        }.joined(separator: "\n") + "\n"
    }

    /// One `Label value` line per field, the values aligned after the longest label (an `info` command's table).
    public static func fields(_ fields: [(String, String)]) -> String {
        let width = (fields.map(\.0.count).max() ?? 0) + 1
        return fields.map { $0.0.padding(toLength: width, withPad: " ", startingAt: 0) + " " + $0.1 }
            .joined(separator: "\n") + "\n"
    }

    /// RFC 4180 quoting.
    static func csvField(_ field: String) -> String {
        guard field.contains(where: { $0 == "," || $0 == "\"" || $0 == "\n" || $0 == "\r" }) else { return field }
        return "\"" + field.replacingOccurrences(of: "\"", with: "\"\"") + "\""
    }
}
