import ArgumentParser
import Foundation
import NimbusCore
import NimbusSeed

/// `nimbus seed`: a cloud-init NoCloud seed ISO (or an Ignition config) from user-data or from flags.
/// Accepts cloud-localds's positional form, so it can replace cloud-localds in scripts.
public struct SeedCommand: AsyncParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "seed",
        abstract: "Make a cloud-init seed ISO (NoCloud, config drive or OVF) or an Ignition config.",
        discussion: """
            Takes cloud-localds's form: nimbus seed OUTPUT USER-DATA [META-DATA]. Without USER-DATA the \
            config is built from --hostname, --user, --ssh-key, --locale and --timezone. With USER-DATA \
            (`-` for stdin), a #cloud-config is checked and merged with those flags (its scalars win, lists \
            are appended); scripts, #include, jinja templates, MIME multipart and gzip pass through untouched.
            With --print, OUTPUT is left out and the rendered files are shown instead of written.
            The ISO's dates come from SOURCE_DATE_EPOCH when set, so builds can be reproducible.
            """)

    @Argument(
        help: ArgumentHelp(
            "OUTPUT, then USER-DATA and META-DATA (OUTPUT is left out with --print).",
            valueName: "output> <user-data> <meta-data"))
    public var files: [String] = []

    @Option(name: .long, help: ArgumentHelp("Use this network-config (version 1 or 2) as is.", valueName: "file"))
    public var networkConfig: String?

    @Option(name: .long, help: ArgumentHelp("Use this vendor-data instead of Nimbus's defaults.", valueName: "file"))
    public var vendorData: String?

    @Option(name: .long, help: "Host name, or a fully qualified name (web.example.test).")
    public var hostname: String?

    @Option(
        name: .long, help: ArgumentHelp("Authorize the keys of this .pub file (repeatable).", valueName: "file.pub"))
    public var sshKey: [String] = []

    @Option(name: .long, help: ArgumentHelp("Create this sudo user, holding the --ssh-key keys.", valueName: "name"))
    public var user: String?

    @Option(name: .long, help: "System locale, e.g. en_US.UTF-8.")
    public var locale: String?

    @Option(name: .long, help: "Time zone, e.g. Europe/Paris.")
    public var timezone: String?

    @Option(
        name: .long,
        help: ArgumentHelp(
            "MAC address of the first NIC, for a network-config v2 giving it DHCP (without it, cloud-init's fallback does the same).",
            valueName: "address"))
    public var mac: String?

    @Option(
        name: .long,
        help:
            "nocloud (an ISO, the default), ignition (an Ignition JSON file, spec 3.0.0 unless a feature needs newer), configdrive (an OpenStack config drive v2 ISO) or ovf (an OVF environment ISO, VMware's ISO transport)."
    )
    public var format: SeedFormat = .nocloud

    @Flag(name: .long, help: "Show the rendered files instead of writing OUTPUT.")
    public var print = false

    @OptionGroup public var global: Flags.Global

    public init() {}

    public func validate() throws {
        let maximum = (print ? 2 : 3) - (format == .ignition ? 1 : 0)
        if !print && files.isEmpty {
            throw ValidationError("give OUTPUT, the file to write (or --print to show the result)")
        }
        if files.count > maximum {
            throw ValidationError(
                print
                    ? "with --print, give at most USER-DATA and META-DATA (OUTPUT is left out)"
                    : "give at most OUTPUT, USER-DATA and META-DATA (\(files.count) files given)")
        }
        if user == nil, hostname == nil, sshKey.isEmpty, locale == nil, timezone == nil, userData == nil, !print {
            throw ValidationError(
                "give USER-DATA, or build one with --hostname, --user, --ssh-key, --locale, --timezone")
        }
    }

    var output: String? { print ? nil : files.first }
    var userData: String? { files.dropFirst(print ? 0 : 1).first }
    var metaData: String? { files.dropFirst(print ? 1 : 2).first }

    /// The library request these arguments stand for.
    public var request: SeedRequest {
        var request = SeedRequest()
        request.format = format.request
        request.userDataPath = userData
        request.metaDataPath = metaData
        request.networkConfigPath = networkConfig
        request.vendorDataPath = vendorData
        request.hostname = hostname
        request.sshKeyPaths = sshKey
        request.user = user
        request.locale = locale
        request.timezone = timezone
        request.macAddress = mac
        return request
    }

    public func run() async throws {
        let result: SeedRequest.Output
        do {
            result = try request.render()
        } catch {
            throw error.nimbusError
        }
        for warning in result.warnings where !global.quiet {
            FileHandle.standardError.write(Data("warning: \(warning)\n".utf8))
        }
        if global.verbose, case .ignition(let config) = result {
            FileHandle.standardError.write(
                Data("ignition: spec \(config.specVersion): \(config.versionReason)\n".utf8))
        }
        if print {
            FileHandle.standardOutput.write(Data(result.printed.utf8))
            return
        }
        guard let output else { return }
        do {
            // Like cloud-localds: atomic (temp + rename) but not fsync'ed; instances write theirs durably.
            try result.write(to: URL(fileURLWithPath: output), timestamp: Self.timestamp(), durable: false)
        } catch {
            throw error.nimbusError
        }
    }

    /// SOURCE_DATE_EPOCH (reproducible-builds.org) when set, else now.
    static func timestamp() -> Date {
        // getenv rather than ProcessInfo's environment, which copies every variable into a dictionary first.
        if let epoch = getenv("SOURCE_DATE_EPOCH").map({ String(cString: $0) }), let seconds = TimeInterval(epoch) {
            return Date(timeIntervalSince1970: seconds)
        }
        return Date()
    }
}

/// `--format` of `nimbus seed`.
public enum SeedFormat: String, ExpressibleByArgument, CaseIterable, Sendable {
    case nocloud, ignition, configdrive, ovf

    var request: SeedRequest.Format {
        switch self {
        case .nocloud: .nocloud
        case .ignition: .ignition
        case .configdrive: .configDrive
        case .ovf: .ovf
        }
    }
}
