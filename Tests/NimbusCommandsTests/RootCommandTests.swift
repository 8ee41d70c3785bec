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

    @Test("tables align columns under upper-case headers")
    func table() {
        #expect(
            OutputRenderer.table(columns: ["name", "state"], rows: [["web", "running"], ["database", "stopped"]])
                == "NAME      STATE\nweb       running\ndatabase  stopped\n")
    }
}
