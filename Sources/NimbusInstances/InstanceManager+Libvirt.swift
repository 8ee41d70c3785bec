import Foundation
import NimbusCore
import NimbusMachines
import Yams

/// Instances through libvirt that outlive their folder: what the domain's metadata keeps, the daemons the
/// store knows, `list` of domains whose folder is missing, and `recover` that rebuilds the folder.
///
/// A libvirt domain is persistent and carries Nimbus's metadata element; `startMachine` puts there what
/// the folder holds and cannot be read back from the guest or the daemon: the spec (instance.yaml), the
/// state (state.json) and the pinned host key (known_hosts). The spec goes without the user's user-data:
/// libvirt shows a domain's XML, metadata included, to every read-only client, and qemu:///system's
/// read-only socket is open to every local user; user-data often holds passwords and tokens.
extension InstanceManager {
    /// Annotation keys in the domain's metadata.
    enum Annotation {
        static let spec = "spec"
        static let state = "state"
        static let knownHosts = "knownHosts"
    }

    /// What a libvirt domain keeps of the instance, so `recover` can rebuild its folder.
    func annotations(_ spec: InstanceSpec, state: InstanceState, in dir: InstanceDirectory) -> [String: String] {
        var kept = spec
        kept.userData = nil
        kept.userDataEncoding = .text
        var annotations: [String: String] = [:]
        if let yaml = try? YAMLEncoder().encode(kept) { annotations[Annotation.spec] = yaml }
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        encoder.dateEncodingStrategy = .iso8601
        if let json = try? encoder.encode(state) {
            annotations[Annotation.state] = String(decoding: json, as: UTF8.self)
        }
        if let hosts = try? String(contentsOf: dir.knownHosts, encoding: .utf8) {
            annotations[Annotation.knownHosts] = hosts
        }
        return annotations
    }

    /// Refreshes what the domain keeps of a libvirt instance once its state changed (after a start, after
    /// readiness). Best effort: the folder stays the truth, and a failure here only makes a later recover
    /// less exact.
    func refreshAnnotations(_ name: InstanceName) {
        guard let spec = try? store.loadSpec(name), spec.driver == "libvirt", let state = try? store.loadState(name)
        else { return }
        let dir = store.directory(name)
        guard let driver = hypervisor.driver(for: spec) as? LibvirtDriver else { return }
        try? driver.annotate(dir.machine, annotations(spec, state: state, in: dir))
    }

    // MARK: Daemons the store knows

    /// The libvirt daemons this store has launched instances on, kept beside the instances so that a lost
    /// instance folder does not lose the daemon with it.
    var libvirtDaemonsFile: URL { paths.data.appending(path: "libvirt-daemons.json") }

    /// The URIs of the daemons this store knows: the file's, and with `includingSpecs` those its libvirt
    /// instances name (`list` skips them: it has read every spec already, and launch writes the file).
    public func knownLibvirtURIs(includingSpecs: Bool = true) -> [String] {
        var uris = Set(
            (try? JSONDecoder().decode([String].self, from: Data(contentsOf: libvirtDaemonsFile))) ?? [])
        for name in includingSpecs ? store.names() : [] {
            if let spec = try? store.loadSpec(name), spec.driver == "libvirt" {
                uris.insert(spec.connect ?? LibvirtDriver.defaultURI)
            }
        }
        return uris.sorted()
    }

    /// Adds `uri` to the daemons the store knows. Two launches adding two new daemons at the same moment
    /// could lose one of them here; the instances' own specs still name it, so it is only lost with them.
    func rememberLibvirtDaemon(_ uri: String) throws(NimbusError) {
        var uris = (try? JSONDecoder().decode([String].self, from: Data(contentsOf: libvirtDaemonsFile))) ?? []
        guard !uris.contains(uri) else { return }
        uris.append(uri)
        try writeDaemons(uris.sorted())
    }

    /// Drops `uri` once neither an instance of the store nor a domain of one uses it, so `delete --purge`
    /// of the last instance leaves no trace of the daemon.
    func forgetLibvirtDaemonIfUnused(_ uri: String) {
        guard var uris = try? JSONDecoder().decode([String].self, from: Data(contentsOf: libvirtDaemonsFile)),
            uris.contains(uri)
        else { return }
        let used = store.names().contains { name in
            guard let spec = try? store.loadSpec(name), spec.driver == "libvirt" else { return false }
            return (spec.connect ?? LibvirtDriver.defaultURI) == uri
        }
        guard !used, let domains = try? LibvirtDriver.nimbusDomains(uri: uri),
            !domains.contains(where: { isThisStore($0.metadata.folder) })
        else { return }
        uris.removeAll { $0 == uri }
        if uris.isEmpty {
            try? FileManager.default.removeItem(at: libvirtDaemonsFile)
        } else {
            try? writeDaemons(uris)
        }
    }

    private func writeDaemons(_ uris: [String]) throws(NimbusError) {
        try store.createFolder(paths.data)
        do {
            try AtomicFile.write(try JSONEncoder().encode(uris), to: libvirtDaemonsFile)
        } catch let error as NimbusError {
            throw error
        } catch {
            throw NimbusError(.internalError, "could not encode \(libvirtDaemonsFile.path)", cause: error)
        }
    }

    // MARK: Domains whose folder is missing

    /// Whether a machine folder named in a domain's metadata is an instance folder of this store.
    func isThisStore(_ folder: String) -> Bool {
        URL(fileURLWithPath: folder).deletingLastPathComponent().standardizedFileURL.path
            == paths.instances.standardizedFileURL.path
    }

    /// Nimbus domains on `uris` that belong to this store and whose instance folder is missing.
    func lostDomains(on uris: [String]) throws(NimbusError) -> [LibvirtDomainSummary] {
        var lost: [LibvirtDomainSummary] = []
        for uri in uris {
            for domain in try LibvirtDriver.nimbusDomains(uri: uri) where isThisStore(domain.metadata.folder) {
                guard let name = try? InstanceName(domain.metadata.name), !store.exists(name) else { continue }
                lost.append(domain)
            }
        }
        return lost.sorted { $0.metadata.name < $1.metadata.name }
    }

    /// `list`'s rows for the domains of the daemons the store knows whose instance folder is missing.
    func lostInstances() -> [InstanceInfo] {
        var infos: [InstanceInfo] = []
        for uri in knownLibvirtURIs(includingSpecs: false) {
            do throws(NimbusError) {
                infos += try lostDomains(on: [uri]).map(lostInfo)
            } catch {
                progress("warning: could not look for Nimbus domains on \(uri): \(error.message)")
            }
        }
        return infos
    }

    func lostInfo(_ domain: LibvirtDomainSummary) -> InstanceInfo {
        let spec = domain.metadata.annotations[Annotation.spec].flatMap {
            try? YAMLDecoder().decode(InstanceSpec.self, from: $0)
        }
        let state = domain.metadata.annotations[Annotation.state].flatMap { text -> InstanceState? in
            let decoder = JSONDecoder()
            decoder.dateDecodingStrategy = .iso8601
            return try? decoder.decode(InstanceState.self, from: Data(text.utf8))
        }
        let name = domain.metadata.name
        return InstanceInfo(
            name: name, state: .missing, image: spec?.image ?? "?", imageVersion: state?.imageDescription, ipv4: [],
            ssh: nil, cpus: spec?.cpus ?? 0, memory: spec?.memory ?? ByteSize(bytes: 0), diskUsed: nil,
            diskSize: spec?.disk ?? ByteSize(bytes: 0), accelerator: state?.accelerator,
            acceleratorReason: state?.acceleratorReason, uptime: nil, cloudInit: nil, driver: "libvirt",
            host: LibvirtDriver.hostLabel(domain.uri),
            forwards: (spec?.forwards ?? []).map {
                "127.0.0.1:\($0.hostPort)->\($0.guestPort)/\($0.transport.rawValue)"
            },
            error:
                "its instance folder is missing; libvirt domain \(domain.domain) on \(domain.uri) is \(domain.state.rawValue): `nimbus recover \(name)` rebuilds the folder from the domain's metadata"
        )
    }

    // MARK: Recover

    /// Rebuilds the folders of every instance of this store whose folder is missing while its domain
    /// remains on `connect` (or on every daemon the store knows); returns their names.
    public func recoverLost(connect: String?) async throws -> [InstanceName] {
        let uris = connect.map { [$0] } ?? knownLibvirtURIs()
        guard !uris.isEmpty else {
            throw NimbusError(
                .notFound,
                "nothing to recover: this store knows no libvirt daemon; name one with `nimbus recover --connect URI`")
        }
        let lost = try lostDomains(on: uris)
        guard !lost.isEmpty else {
            throw NimbusError(
                .notFound,
                "nothing to recover: no Nimbus domain on \(uris.joined(separator: ", ")) belongs to a missing instance of this store (\(paths.instances.path))"
            )
        }
        var recovered: [InstanceName] = []
        for domain in lost { recovered.append(try await rebuild(from: domain)) }
        return recovered
    }

    /// `recover NAME`: an instance of the store (deleted, or in the error state) as before; an instance
    /// whose folder is missing, rebuilt from its domain on `connect` or the daemons the store knows.
    public func recover(_ name: InstanceName, connect: String?) async throws {
        let uris = connect.map { [$0] } ?? knownLibvirtURIs()
        if store.exists(name) {
            try checkNoOtherDomain(claims: name, on: uris)
            try await recover(name)
            return
        }
        for uri in uris {
            switch try LibvirtDriver.domain(forInstance: name.rawValue, uri: uri) {
            case .none:
                continue
            case .foreign(let domain):
                throw NimbusError(
                    .alreadyExists,
                    "libvirt domain \(domain) on \(uri) was not created by Nimbus (it has no Nimbus metadata): recover never touches it"
                )
            case .nimbus(let domain):
                guard domain.metadata.folder == store.directory(name).machine.url.path else {
                    throw NimbusError(
                        .alreadyExists,
                        "libvirt domain \(domain.domain) on \(uri) belongs to the Nimbus instance in \(domain.metadata.folder) (host \(domain.metadata.origin)), not to this store: recover it with that store's NIMBUS_HOME"
                    )
                }
                _ = try await rebuild(from: domain)
                return
            }
        }
        let searched =
            uris.isEmpty ? "this store knows no libvirt daemon" : "nor is its domain on \(uris.joined(separator: ", "))"
        throw NimbusError(
            .notFound,
            "instance \"\(name)\" does not exist, \(searched): `nimbus list` shows the instances, `nimbus recover --connect URI \(name)` looks on another daemon"
        )
    }

    /// An instance of the store whose folder a Nimbus domain of another instance claims (the store was
    /// lost, and the name reused by a new instance): refused, naming both.
    func checkNoOtherDomain(claims name: InstanceName, on uris: [String]) throws(NimbusError) {
        // An instance whose spec cannot be read is the old recover's to repair.
        guard let spec = try? store.loadSpec(name) else { return }
        for uri in uris where !(spec.driver == "libvirt" && (spec.connect ?? LibvirtDriver.defaultURI) == uri) {
            // A daemon that does not answer cannot claim the folder; it must not block recovering the instance.
            guard case .nimbus(let domain)? = try? LibvirtDriver.domain(forInstance: name.rawValue, uri: uri),
                domain.metadata.folder == store.directory(name).machine.url.path
            else { continue }
            throw NimbusError(
                .alreadyExists,
                "an instance named \"\(name)\" exists already (driver \(spec.driver)), and libvirt domain \(domain.domain) on \(uri) is another instance of that name whose folder was lost: `nimbus delete --purge \(name)` first to recover the domain's, or leave the domain alone"
            )
        }
    }

    /// Writes a new instance folder from the domain's metadata: instance.yaml, state.json, known_hosts and
    /// the machine's record of its daemon and domain.
    func rebuild(from domain: LibvirtDomainSummary) async throws -> InstanceName {
        let name = try InstanceName(domain.metadata.name)
        guard domain.metadata.folder == store.directory(name).machine.url.path else {
            throw NimbusError(
                .alreadyExists,
                "libvirt domain \(domain.domain) on \(domain.uri) belongs to the Nimbus instance in \(domain.metadata.folder), not to this store"
            )
        }
        guard let specText = domain.metadata.annotations[Annotation.spec] else {
            throw NimbusError(
                .unsupported,
                "libvirt domain \(domain.domain) on \(domain.uri) has Nimbus metadata without the instance's spec (an older Nimbus made it): it cannot be rebuilt; `virsh -c \(domain.uri) undefine --nvram \(domain.domain)` removes it"
            )
        }
        let spec: InstanceSpec
        do {
            spec = try YAMLDecoder().decode(InstanceSpec.self, from: specText)
        } catch {
            throw NimbusError(
                .io, "the spec in libvirt domain \(domain.domain)'s metadata cannot be read", cause: error)
        }
        guard spec.name == name else {
            throw NimbusError(
                .io, "libvirt domain \(domain.domain)'s metadata names instance \(name) but its spec \(spec.name)")
        }
        var state = InstanceState()
        if let text = domain.metadata.annotations[Annotation.state] {
            let decoder = JSONDecoder()
            decoder.dateDecodingStrategy = .iso8601
            state = (try? decoder.decode(InstanceState.self, from: Data(text.utf8))) ?? state
        }
        state.sshPort = domain.metadata.sshPort ?? state.sshPort
        state.lastError = nil
        state.deleted = false
        state.cloudInitStatus = nil
        let recoveredState = state
        try await store.withLock(name) { _ in
            guard !store.exists(name) else {
                throw NimbusError(
                    .alreadyExists,
                    "an instance named \"\(name)\" exists already: recover leaves it as it is; `nimbus list` shows it")
            }
            _ = try await store.create(spec) { staging in
                try AtomicFile.write(
                    Data((domain.metadata.annotations[Annotation.knownHosts] ?? "").utf8), to: staging.knownHosts)
                try LibvirtDriver.adopt(domain, in: staging.machine)
                return recoveredState
            }
        }
        try rememberLibvirtDaemon(domain.uri)
        var message =
            "\(name): recovered from libvirt domain \(domain.domain) on \(domain.uri) (\(domain.state.rawValue))"
        if !domain.missingFiles.isEmpty {
            message +=
                "; these files of it went with the folder: \(domain.missingFiles.joined(separator: ", ")). "
                + (domain.state == .stopped
                    ? "It cannot start until they are back"
                    : "It runs on (QEMU holds them open), but will not start again once stopped: copy out what matters")
        }
        progress(message)
        return name
    }
}
