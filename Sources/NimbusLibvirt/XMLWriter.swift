import Foundation
import NimbusCore
import NimbusMachines

/// Indented XML lines; a class so nested `indent` blocks write to the same text.
final class XMLWriter {
    var text = ""
    var depth = 0

    func line(_ content: String) {
        text += String(repeating: "  ", count: depth) + content + "\n"
    }

    func element(_ name: String, _ value: String, attributes: String? = nil) {
        let open = attributes.map { "\(name) \($0)" } ?? name
        line("<\(open)>\(LibvirtDomainXML.escape(value))</\(name)>")
    }

    func indent<E: Error>(_ body: () throws(E) -> Void) throws(E) {
        depth += 1
        defer { depth -= 1 }
        try body()
    }
}
