import ArgumentParser
import Foundation
import NimbusImages

/// `nimbus image pull REF`: resolve, download, verify, cache.
struct ImagePull: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "pull", abstract: "Download and verify an image into the cache.",
        discussion: """
            REF is ubuntu[:24.04|:noble|:lts|:daily:26.04], debian[:12|:bookworm], fedora-coreos[:stable|:testing|:next], \
            a file path or file:// URL (imported), an https:// URL (with --checksum sha256:...), or an alias.
            """)

    @OptionGroup var global: Flags.Global
    @OptionGroup var output: Flags.Output
    @OptionGroup var catalog: ImageCatalogOptions

    @Option(name: .long, help: "For https:// images: the expected digest, sha256:<hex>.")
    var checksum: String?

    @Argument(help: "The image to pull.")
    var reference: String

    func run() async throws {
        let store = try ImageCommandSupport.store(global: global, refresh: catalog.refresh)
        let parsed = try await store.reference(reference, checksum: checksum)
        let image = try await store.pull(parsed, arch: try catalog.architecture(), as: reference)
        print(
            try OutputRenderer.render(
                image, columns: ImageCommandSupport.listColumns, rows: [ImageCommandSupport.row(image)],
                format: output.format),
            terminator: "")
    }
}
