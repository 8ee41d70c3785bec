import ArgumentParser
import NimbusImages

/// `nimbus image refresh`: the catalogs' metadata fetched afresh for every cached image, and what is newer.
struct ImageRefresh: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "refresh",
        abstract: "Fetch the catalog metadata of the cached images, and show which have newer builds.",
        discussion:
            "`nimbus list` and `nimbus info` show an instance's `update` from this metadata without asking the network."
    )

    @OptionGroup var global: Flags.Global
    @OptionGroup var output: Flags.Output

    func run() async throws {
        let store = try ImageCommandSupport.store(global: global, refresh: true)
        let updates = try await store.refreshUpdates()
        let rows = updates.map { [$0.reference, $0.current ?? "-", $0.newest, $0.available ? "yes" : "no"] }
        print(
            try OutputRenderer.render(
                updates, columns: ["reference", "cached", "newest", "update"], rows: rows, format: output.format),
            terminator: "")
    }
}
