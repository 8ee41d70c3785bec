import NimbusCommands
import Testing

@Suite("The nimbus command")
struct RootCommandTests {
    @Test("--version prints the version and the commit it was built from")
    func version() {
        #expect(NimbusCommand.configuration.version == "nimbus \(NimbusCommand.version) (commit \(BuildInfo.commit))")
        #expect(BuildInfo.commit == "unknown" || BuildInfo.commit.wholeMatch(of: /[0-9a-f]{7,40}(-dirty)?/) != nil)
    }

    @Test("CSV fields with commas and quotes are quoted per RFC 4180")
    func csv() throws {
        struct Row: Encodable { let a: String }
        let text = try OutputRenderer.render(
            [Row(a: "x")], columns: ["a", "b"], rows: [["1,2", "say \"hi\""]], format: .csv)
        #expect(text == "a,b\n\"1,2\",\"say \"\"hi\"\"\"\n")
    }

    @Test("JSON writes an empty list or object as [] and {}, at the top and nested, and leaves strings alone")
    func emptyJSON() throws {
        struct Row: Encodable {
            let name: String
            let networks: [String]
            let labels: [String: String]
        }
        #expect(try OutputRenderer.render([Row](), columns: [], rows: [], format: .json) == "[]\n")
        let text = try OutputRenderer.render(
            [Row(name: "[\n]", networks: [], labels: [:])], columns: [], rows: [], format: .json)
        #expect(text.contains("\"networks\" : []") && text.contains("\"labels\" : {}"), "\(text)")
        #expect(text.contains(#""name" : "[\n]""#), "\(text)")
    }

    @Test("tables align columns under upper-case headers")
    func table() {
        #expect(
            OutputRenderer.table(columns: ["name", "state"], rows: [["web", "running"], ["database", "stopped"]])
                == "NAME      STATE\nweb       running\ndatabase  stopped\n")
    }
}
