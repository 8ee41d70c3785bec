import CLibvirt
import Foundation
import NimbusCore
import NimbusMachines

/// A domain with Nimbus's metadata, found on a daemon.
public struct LibvirtDomainSummary: Sendable, Hashable {
    /// The daemon's URI.
    public var uri: String
    /// The domain's name (`nimbus-NAME`).
    public var domain: String
    /// What its metadata element records.
    public var metadata: LibvirtDomainXML.Metadata
    /// Whether it runs.
    public var state: MachineStatus.State
    /// Files of its definition (disks, seed, NVRAM) that do not exist, on a local daemon; empty remotely,
    /// where they are not this host's to check.
    public var missingFiles: [String]
}

extension LibvirtDriver {
    /// What `domain(forInstance:)` found under an instance's domain name.
    public enum Lookup: Sendable, Hashable {
        /// No domain of that name.
        case none
        /// A domain of that name without Nimbus's metadata: never touched.
        case foreign(domain: String)
        /// Nimbus's domain.
        case nimbus(LibvirtDomainSummary)
    }

    /// Every domain on the daemon at `uri` that carries Nimbus's metadata; domains without it are skipped.
    public static func nimbusDomains(uri: String) throws(NimbusError) -> [LibvirtDomainSummary] {
        let connection = try LibvirtConnection(uri: uri)
        return try connection.allDomains().compactMap { summary($0, uri: uri) }
    }

    /// The domain an instance named `instance` would have on the daemon at `uri`.
    public static func domain(forInstance instance: String, uri: String) throws(NimbusError) -> Lookup {
        let connection = try LibvirtConnection(uri: uri)
        let name = LibvirtDomainXML.domainName(for: instance)
        guard let domain = try connection.domain(named: name) else { return .none }
        guard let summary = summary(domain, uri: uri) else { return .foreign(domain: name) }
        return .nimbus(summary)
    }

    static func summary(_ domain: LibvirtDomain, uri: String) -> LibvirtDomainSummary? {
        guard let metadata = domain.metadata else { return nil }
        let state = (try? domain.state()).map { machineState($0.state).0 } ?? .unresponsive
        var missing: [String] = []
        if isLocal(uri), let xml = domain.xml(inactive: true) {
            missing = files(in: xml).filter { !FileManager.default.fileExists(atPath: $0) }
        }
        return LibvirtDomainSummary(
            uri: uri, domain: domain.name, metadata: metadata, state: state, missingFiles: missing)
    }

    /// The files a domain definition names: disk sources and the NVRAM.
    static func files(in xml: String) -> [String] {
        let pattern = #"<source file=["']([^"']+)["']|<nvram[^>]*>([^<]+)</nvram>"#
        guard let expression = try? NSRegularExpression(pattern: pattern) else { return [] }
        return expression.matches(in: xml, range: NSRange(xml.startIndex..., in: xml)).compactMap { match in
            let range = Range(match.range(at: 1), in: xml) ?? Range(match.range(at: 2), in: xml)
            return range.map { LibvirtDomainXML.unescape(String(xml[$0])) }
        }
    }

    /// Replaces the owner's annotations in the metadata of the machine's domain, in its persistent
    /// definition and, while it runs, in the live one (what `start` wrote is from before the start).
    public func annotate(_ directory: MachineDirectory, _ annotations: [String: String]) throws(NimbusError) {
        guard let domain = try ownedDomain(directory), var metadata = domain.metadata else { return }
        metadata.annotations = annotations.merging(Self.storageAnnotation(directory)) { $1 }
        var flags = VIR_DOMAIN_AFFECT_CONFIG.rawValue
        if domain.isActive { flags |= VIR_DOMAIN_AFFECT_LIVE.rawValue }
        try domain.call("update the metadata of", "virDomainSetMetadata") {
            libvirt.virDomainSetMetadata(
                $0, Int32(VIR_DOMAIN_METADATA_ELEMENT.rawValue), metadata.element(prefix: nil), "nimbus",
                LibvirtDomainXML.metadataNamespace, flags)
        }
    }

    /// Makes `directory` the folder of a Nimbus domain found on a daemon (`nimbus recover`, which builds
    /// the folder elsewhere and renames it to the one the metadata names): it records the daemon and the
    /// domain, so the driver finds the machine again.
    public static func adopt(_ machine: DefinedMachine, in directory: MachineDirectory) throws(NimbusError) {
        try writeRecord(Record(uri: machine.place, domain: machine.definitionName), in: directory)
        // Which pool volumes are the machine's: without it, its next start would make a new, empty overlay.
        if let storage = machine.annotations[storageAnnotationKey] {
            do {
                try AtomicFile.write(Data(storage.utf8), to: LibvirtStorage.recordFile(directory), permissions: 0o600)
            } catch {
                throw NimbusError(.io, "could not write \(LibvirtStorage.recordFile(directory).path)", cause: error)
            }
        }
    }

    /// The annotation that keeps the machine's storage record (`LibvirtStorage.Record`) in its domain.
    static let storageAnnotationKey = "libvirtStorage"

    /// The machine's storage record as an annotation, so a domain whose folder was lost still names its
    /// volumes; empty when the machine has none.
    static func storageAnnotation(_ directory: MachineDirectory) -> [String: String] {
        guard let data = try? Data(contentsOf: LibvirtStorage.recordFile(directory)) else { return [:] }
        return [storageAnnotationKey: String(decoding: data, as: UTF8.self)]
    }

    /// The host a URI names, as `nimbus list` shows it: `local` for this host's daemons.
    public static func hostLabel(_ uri: String) -> String {
        let host = URLComponents(string: uri)?.host ?? ""
        return host.isEmpty ? "local" : host
    }
}
