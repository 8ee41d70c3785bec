import Crypto
import Foundation
import NimbusCore

/// Which of its two layouts a catalog's mirror has (see `Mirrors`), decided by what the mirror holds.
enum MirrorLayout: String, Sendable, Codable {
    /// The publisher's tree: Ubuntu's host root (`releases/`, `daily/`), Debian's `images/cloud/` (`<codename>/`).
    case whole
    /// One part of it at the mirror's top: one Ubuntu stream (`streams/v1/`, as sstream-mirror writes it), one
    /// Debian codename's tree (`latest/`).
    case part
}

/// A file found on a mirror, and the layout it was found in.
struct LocatedFile: Sendable {
    var layout: MirrorLayout
    var url: URL
    var data: Data
}

extension MetadataCache {
    /// The first of the two layouts whose file `file(layout)` is on `mirror`, with that file's body (from
    /// `fetch`): the layout this mirror was last found to have is tried first, else `.whole`. Only a missing
    /// file (HTTP 404, an unreadable file://) moves on to the other layout; any other failure is reported as it
    /// is. Nil when neither layout has the file.
    ///
    /// The layout found is remembered in the metadata folder when it is `.part`, so that resolving from cached
    /// metadata asks a stream-root mirror nothing (not even for the host-root path it lacks), and forgotten when
    /// the mirror turns out to be whole again; a whole mirror costs one failed open of that note.
    func locate(
        catalog: String, mirror: URL, file: (MirrorLayout) -> URL,
        fetch: (URL) async throws(NimbusError) -> Data
    ) async throws(NimbusError) -> LocatedFile? {
        let remembered = rememberedLayout(catalog: catalog, mirror: mirror) ?? .whole
        for layout in remembered == .part ? [MirrorLayout.part, .whole] : [.whole, .part] {
            let url = file(layout)
            let data: Data
            do {
                data = try await fetch(url)
            } catch {
                guard error.code == .notFound else { throw error }
                continue
            }
            if layout != remembered { remember(layout, catalog: catalog, mirror: mirror) }
            return LocatedFile(layout: layout, url: url, data: data)
        }
        return nil
    }

    /// What `<metadata>/layout-<hash>.json` holds.
    private struct LayoutNote: Codable {
        var catalog: String
        var mirror: String
        var layout: MirrorLayout
    }

    private func layoutNote(catalog: String, mirror: URL) -> URL {
        let key = SHA256.hash(data: Data("\(catalog) \(mirror.absoluteString)".utf8)).prefix(16)
            .map { String(format: "%02x", $0) }.joined()
        return folder.appending(path: "layout-\(key).json")
    }

    func rememberedLayout(catalog: String, mirror: URL) -> MirrorLayout? {
        guard let data = try? Data(contentsOf: layoutNote(catalog: catalog, mirror: mirror)),
            let note = try? JSONDecoder().decode(LayoutNote.self, from: data),
            note.catalog == catalog, note.mirror == mirror.absoluteString
        else { return nil }
        return note.layout
    }

    /// Notes `layout` for the mirror; `.whole`, the default, removes the note. Best effort: a note that cannot be
    /// written only costs the next resolve one more request.
    private func remember(_ layout: MirrorLayout, catalog: String, mirror: URL) {
        let note = layoutNote(catalog: catalog, mirror: mirror)
        guard layout == .part else {
            try? FileManager.default.removeItem(at: note)
            return
        }
        guard
            let data = try? JSONEncoder.iso.encode(
                LayoutNote(catalog: catalog, mirror: mirror.absoluteString, layout: layout))
        else { return }
        try? FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        try? AtomicFile.write(data, to: note)
    }
}

extension MetadataCache {
    /// Whether `url` is there to be read, asked once and not cached: for error messages that suggest a fix.
    func isOnMirror(_ url: URL) async -> Bool {
        if url.isFileURL { return FileManager.default.isReadableFile(atPath: url.path) }
        return (try? await HTTP.get(url, policy: RetryPolicy(attempts: 1))) != nil
    }
}
