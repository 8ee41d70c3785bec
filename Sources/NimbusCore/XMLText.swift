/// Text for XML documents written by hand (the OVF descriptor, the OVF environment): one fixed shape with a
/// few values, each escaped here.
public enum XMLText {
    /// `text` for an attribute value or element content: `&`, `<`, `>`, both quotes, and newlines (which an
    /// attribute would otherwise turn into spaces) as references.
    public static func escape(_ text: String) -> String {
        var escaped = ""
        for character in text {
            switch character {
            case "&": escaped += "&amp;"
            case "<": escaped += "&lt;"
            case ">": escaped += "&gt;"
            case "\"": escaped += "&quot;"
            case "'": escaped += "&apos;"
            case "\n": escaped += "&#10;"
            default: escaped.append(character)
            }
        }
        return escaped
    }
}
