import Foundation

/// Where Nimbus keeps its state, its cache and its configuration.
///
/// With `NIMBUS_HOME=DIR` everything lives under `DIR` (`DIR/data`, `DIR/cache`, `DIR/config`), which
/// is how tests and benchmarks isolate themselves. Without it, the XDG base directories apply.
public struct NimbusPaths: Sendable, Equatable {
    /// `$XDG_DATA_HOME/nimbus`: instances and keys.
    public let data: URL
    /// `$XDG_CACHE_HOME/nimbus`: images and catalog metadata.
    public let cache: URL
    /// `$XDG_CONFIG_HOME/nimbus`: `config.yaml`.
    public let config: URL
    /// Host networks (`nimbus network`): host-wide like the bridges they stand for, so one that root makes
    /// is seen by every user. `$NIMBUS_NETWORKS_DIR`; else `$NIMBUS_HOME/networks`; else
    /// /var/lib/nimbus/networks.
    public let networks: URL

    public init(data: URL, cache: URL, config: URL, networks: URL? = nil) {
        self.data = data
        self.cache = cache
        self.config = config
        self.networks = networks ?? data.appending(path: "networks", directoryHint: .isDirectory)
    }

    /// Resolves the locations from an environment (the process's by default).
    public static func resolve(environment: [String: String] = ProcessInfo.processInfo.environment) -> NimbusPaths {
        let networks = environment["NIMBUS_NETWORKS_DIR"].flatMap { $0.hasPrefix("/") ? $0 : nil }.map {
            URL(fileURLWithPath: $0, isDirectory: true).standardizedFileURL
        }
        if let home = environment["NIMBUS_HOME"], !home.isEmpty {
            let root = URL(fileURLWithPath: home, isDirectory: true).standardizedFileURL
            return NimbusPaths(
                data: root.appending(path: "data", directoryHint: .isDirectory),
                cache: root.appending(path: "cache", directoryHint: .isDirectory),
                config: root.appending(path: "config", directoryHint: .isDirectory),
                networks: networks ?? root.appending(path: "networks", directoryHint: .isDirectory)
            )
        }
        let userHome =
            environment["HOME"].map { URL(fileURLWithPath: $0, isDirectory: true) }
            ?? FileManager.default.homeDirectoryForCurrentUser
        func base(_ variable: String, _ fallback: String) -> URL {
            // XDG says a relative value is invalid and must be ignored.
            if let value = environment[variable], value.hasPrefix("/") {
                return URL(fileURLWithPath: value, isDirectory: true)
            }
            return userHome.appending(path: fallback, directoryHint: .isDirectory)
        }
        return NimbusPaths(
            data: base("XDG_DATA_HOME", ".local/share").appending(path: "nimbus", directoryHint: .isDirectory),
            cache: base("XDG_CACHE_HOME", ".cache").appending(path: "nimbus", directoryHint: .isDirectory),
            config: base("XDG_CONFIG_HOME", ".config").appending(path: "nimbus", directoryHint: .isDirectory),
            networks: networks ?? URL(fileURLWithPath: "/var/lib/nimbus/networks", isDirectory: true)
        )
    }

    /// One folder per instance.
    public var instances: URL { data.appending(path: "instances", directoryHint: .isDirectory) }
    /// One folder per data volume (`nimbus volume`).
    public var volumes: URL { data.appending(path: "volumes", directoryHint: .isDirectory) }
    /// The installation's SSH key pair.
    public var keys: URL { data.appending(path: "keys", directoryHint: .isDirectory) }
    /// Content-addressed base images: `<sha256>.img` and `<sha256>.json`.
    public var images: URL { cache.appending(path: "images", directoryHint: .isDirectory) }
    /// Catalog metadata with its HTTP validators.
    public var metadata: URL { cache.appending(path: "metadata", directoryHint: .isDirectory) }
    /// Facts about this host that hold until it reboots (the accelerator probe).
    public var hostFacts: URL { cache.appending(path: "host", directoryHint: .isDirectory) }
    /// The defaults file.
    public var configFile: URL { config.appending(path: "config.yaml", directoryHint: .notDirectory) }
}
