import ArgumentParser
import Foundation
import NimbusCore
import NimbusImages
import NimbusInstances
import Synchronization

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// Options every `nimbus image` command that talks to a catalog shares.
struct ImageCatalogOptions: ParsableArguments {
    @Option(name: .long, help: "Image architecture: amd64 or arm64 (default: this host's).")
    var arch: String?

    @Flag(name: .long, help: "Fetch catalog metadata even when the cached copy is younger than an hour.")
    var refresh = false

    func validate() throws {
        if let arch { _ = try Architecture(parsing: arch) }
    }

    func architecture() throws -> Architecture {
        try arch.map { text throws(NimbusError) in try Architecture(parsing: text) } ?? .host
    }
}

enum ImageCommandSupport {
    /// A store for the CLI: progress to stderr (a bar on a TTY, a line per 10% otherwise, nothing with
    /// --quiet), warnings to stderr unless --quiet.
    /// `offline` reads catalogs from cached metadata only (`ImageStore.Options.offline`).
    static func store(global: Flags.Global, refresh: Bool = false, offline: Bool = false) throws -> ImageStore {
        var options = ImageStore.Options()
        options.refresh = refresh
        options.offline = offline
        let display = ProgressDisplay(enabled: !global.quiet, terminal: isatty(STDERR_FILENO) == 1)
        options.progress = { display.update($0) }
        if global.quiet { options.warn = { _ in } }
        let paths = NimbusPaths.resolve()
        let instances = InstanceStore(paths: paths)
        options.disks = { instances.disks() }
        return try ImageStore(paths: paths, options: options)
    }

    static let listColumns = ["reference", "release", "version", "arch", "format", "size", "virtual size", "sha256"]

    static func row(_ image: CachedImage) -> [String] {
        [
            image.reference, image.release ?? "-", image.version ?? "-", image.arch?.rawValue ?? "-",
            image.format.rawValue, ByteSize(bytes: image.size).humanReadable,
            ByteSize(bytes: image.virtualSize).humanReadable, String(image.sha256.prefix(12)),
        ]
    }
}

/// Download progress on stderr: a redrawn bar with bytes, rate and ETA on a terminal, one line per
/// 10% otherwise (logs stay readable), nothing when disabled.
final class ProgressDisplay: Sendable {
    struct State {
        var started = ContinuousClock.now
        var lastDraw = ContinuousClock.now - .seconds(1)
        var lastDecile = -1
        var startBytes: UInt64?
    }

    let enabled: Bool
    let terminal: Bool
    let state = Mutex(State())

    init(enabled: Bool, terminal: Bool) {
        self.enabled = enabled
        self.terminal = terminal
    }

    func update(_ progress: TransferProgress) {
        guard enabled else { return }
        let line: String? = state.withLock { state in
            let now = ContinuousClock.now
            if state.startBytes == nil {
                state.startBytes = progress.bytes
                state.started = now
            }
            let elapsed =
                Double((now - state.started).components.attoseconds) / 1e18
                + Double((now - state.started).components.seconds)
            let rate = elapsed > 0 ? Double(progress.bytes - (state.startBytes ?? 0)) / elapsed : 0
            let fraction = progress.total.map { $0 > 0 ? Double(progress.bytes) / Double($0) : 1 }
            if terminal {
                guard progress.finished || now - state.lastDraw >= .milliseconds(100) else { return nil }
                state.lastDraw = now
                var text = "\r\(progress.what)  "
                if let fraction {
                    let width = 30
                    let filled = Int(fraction * Double(width))
                    text +=
                        "[" + String(repeating: "#", count: filled) + String(repeating: " ", count: width - filled)
                        + "] "
                    text += "\(Int(fraction * 100))%  "
                }
                text += ByteSize(bytes: progress.bytes).humanReadable
                if let total = progress.total { text += " / " + ByteSize(bytes: total).humanReadable }
                text += "  " + ByteSize(bytes: UInt64(rate)).humanReadable + "/s"
                if let total = progress.total, rate > 0, !progress.finished {
                    let seconds = Int(Double(total - min(total, progress.bytes)) / rate)
                    text += "  ETA \(seconds / 60):" + String(format: "%02d", seconds % 60)
                }
                return text + "\u{1B}[K" + (progress.finished ? "\n" : "")
            }
            guard let fraction else { return progress.finished ? "\(progress.what): done\n" : nil }
            let decile = min(10, Int(fraction * 10))
            guard decile > state.lastDecile else { return nil }
            state.lastDecile = decile
            return "\(progress.what): \(decile * 10)% (\(ByteSize(bytes: progress.bytes).humanReadable))\n"
        }
        if let line { FileHandle.standardError.write(Data(line.utf8)) }
    }
}
