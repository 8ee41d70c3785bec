import NimbusCommands
import Testing

@Suite("The nimbus command")
struct RootCommandTests {
    @Test("--version prints the version")
    func version() {
        #expect(NimbusCommand.configuration.version == NimbusCommand.version)
    }

    @Test("CSV fields with commas and quotes are quoted per RFC 4180")
    func csv() throws {
        struct Row: Encodable { let a: String }
        let text = try OutputRenderer.render(
            [Row(a: "x")], columns: ["a", "b"], rows: [["1,2", "say \"hi\""]], format: .csv)
        #expect(text == "a,b\n\"1,2\",\"say \"\"hi\"\"\"\n")
    }

    @Test("tables align columns under upper-case headers")
    func table() {
        #expect(
            OutputRenderer.table(columns: ["name", "state"], rows: [["web", "running"], ["database", "stopped"]])
                == "NAME      STATE\nweb       running\ndatabase  stopped\n")
    }
}
