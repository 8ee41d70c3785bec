import ArgumentParser
import Foundation
import NimbusImages

/// `nimbus image import FILE --name NAME`.
struct ImageImport: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "import", abstract: "Copy a local disk image (qcow2 or raw) into the cache under a name.")

    @OptionGroup var global: Flags.Global
    @OptionGroup var output: Flags.Output

    @Option(name: .long, help: "The name to launch it by.")
    var name: String

    @Argument(help: "The image file.", completion: .file())
    var file: String

    func run() async throws {
        let store = try ImageCommandSupport.store(global: global)
        let url = URL(fileURLWithPath: (file as NSString).expandingTildeInPath)
        let image = try await store.importImage(url, name: name)
        print(
            try OutputRenderer.render(
                image, columns: ImageCommandSupport.listColumns, rows: [ImageCommandSupport.row(image)],
                format: output.format),
            terminator: "")
    }
}
