import ArgumentParser

/// `nimbus image`: the image cache and the catalogs.
struct Image: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "image", abstract: "Pull, import, capture, list, export and remove base images.",
        subcommands: [
            ImageList.self, ImagePull.self, ImageImport.self, ImageInfo.self, ImageRemove.self, ImagePrune.self,
            ImageAlias.self, ImageRefresh.self, ImageCapture.self, ImageExport.self,
        ])
}
