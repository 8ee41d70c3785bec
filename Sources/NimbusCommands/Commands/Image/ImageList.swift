import ArgumentParser
import Foundation
import NimbusCore
import NimbusImages

/// `nimbus image list`: cached images, or with --remote what the catalogs offer.
struct ImageList: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "list", abstract: "List cached images, or with --remote the images the catalogs offer.",
        aliases: ["ls"])

    @OptionGroup var global: Flags.Global
    @OptionGroup var output: Flags.Output
    @OptionGroup var catalog: ImageCatalogOptions

    @Flag(name: .long, help: "List the newest image of each catalog release, and whether it is cached.")
    var remote = false

    func run() async throws {
        let store = try ImageCommandSupport.store(global: global, refresh: catalog.refresh)
        if remote {
            let available = await store.available(arch: try catalog.architecture())
            let rows = available.map { entry -> [String] in
                let image = entry.image
                let release: String = image.codename ?? image.release ?? "-"
                let size: String = image.size.map { ByteSize(bytes: $0).humanReadable } ?? "-"
                return [
                    image.reference, release, image.version ?? "-", image.arch.rawValue, size,
                    entry.cached ? "yes" : "no",
                ]
            }
            print(
                try OutputRenderer.render(
                    available, columns: ["reference", "release", "version", "arch", "size", "cached"], rows: rows,
                    format: output.format), terminator: "")
            return
        }
        let images = try await store.list()
        // The newest build each image's catalog names, from cached metadata only (`image refresh` fetches it).
        let catalogs = try ImageCommandSupport.store(global: global, offline: true)
        var rows: [[String]] = []
        for image in images {
            let update = await catalogs.update(of: image)
            rows.append(ImageCommandSupport.row(image) + [update.map { $0.available ? $0.newest : "this" } ?? "-"])
        }
        print(
            try OutputRenderer.render(
                images, columns: ImageCommandSupport.listColumns + ["newest"], rows: rows, format: output.format),
            terminator: "")
    }
}
