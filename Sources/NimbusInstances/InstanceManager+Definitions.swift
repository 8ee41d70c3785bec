import Foundation
import NimbusCore
import NimbusMachines
import Yams

/// Instances whose machine is defined outside their folder (a driver with `MachineDefinitions`: libvirt's
/// persistent domains) and so can outlive it: what the definition keeps, the places the store knows, `list`
/// of machines whose folder is missing, and `recover` that rebuilds the folder.
///
/// `startMachine` puts in the definition's annotations what the folder holds and cannot be read back from
/// the guest or the driver: the spec (instance.yaml), the state (state.json) and the pinned host key
/// (known_hosts). The spec goes without the user's user-data: libvirt shows a domain's XML, metadata
/// included, to every read-only client, and qemu:///system's read-only socket is open to every local user;
/// user-data often holds passwords and tokens.
extension InstanceManager {
    /// Annotation keys in the domain's metadata.
    enum Annotation {
        static let spec = "spec"
        static let state = "state"
        static let knownHosts = "knownHosts"
    }

    /// What a machine's definition keeps of the instance, so `recover` can rebuild its folder.
    func annotations(_ spec: InstanceSpec, state: InstanceState, in dir: InstanceDirectory) -> [String: String] {
        var kept = spec
        kept.userData = nil
        kept.ignition = nil
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

    /// Refreshes what the definition keeps of an instance once its state changed (after a start, after
    /// readiness). Best effort: the folder stays the truth, and a failure here only makes a later recover
    /// less exact.
    func refreshAnnotations(_ name: InstanceName) async {
        guard let spec = try? store.loadSpec(name), let definitions = hypervisor.driver(for: spec).definitions,
            let state = try? store.loadState(name)
        else { return }
        let dir = store.directory(name)
        try? await definitions.annotate(dir.machine, annotations(spec, state: state, in: dir))
    }

    // MARK: Places the store knows

    /// The places (libvirt daemons' URIs) where this store has defined machines, kept beside the instances
    /// so that a lost instance folder does not lose the place with it. The name is from when libvirt was
    /// the only such driver; files written then still load.
    var placesFile: URL { paths.data.appending(path: "libvirt-daemons.json") }

    /// The places this store knows: the file's, and with `includingSpecs` those its instances' drivers
    /// name (`list` skips them: it has read every spec already, and launch writes the file).
    public func knownPlaces(includingSpecs: Bool = true) -> [String] {
        var places = Set((try? JSONDecoder().decode([String].self, from: Data(contentsOf: placesFile))) ?? [])
        for name in includingSpecs ? store.names() : [] {
            if let place = (try? store.loadSpec(name)).flatMap({ hypervisor.driver(for: $0).definitions?.place }) {
                places.insert(place)
            }
        }
        return places.sorted()
    }

    /// Adds `place` to those the store knows. Two launches adding two new places at the same moment could
    /// lose one of them here; the instances' own specs still name it, so it is only lost with them.
    func rememberPlace(_ place: String) throws(NimbusError) {
        var places = (try? JSONDecoder().decode([String].self, from: Data(contentsOf: placesFile))) ?? []
        guard !places.contains(place) else { return }
        places.append(place)
        try writePlaces(places.sorted())
    }

    /// Drops `place` once neither an instance of the store nor a definition of one uses it, so
    /// `delete --purge` of the last instance leaves no trace of it.
    func forgetPlaceIfUnused(_ place: String) async {
        guard var places = try? JSONDecoder().decode([String].self, from: Data(contentsOf: placesFile)),
            places.contains(place)
        else { return }
        let used = store.names().contains { name in
            (try? store.loadSpec(name)).flatMap { hypervisor.driver(for: $0).definitions?.place } == place
        }
        guard !used, let machines = try? await hypervisor.drivers.definitions(at: place)?.definedMachines(),
            !machines.contains(where: { isThisStore($0.folder) })
        else { return }
        places.removeAll { $0 == place }
        if places.isEmpty {
            try? FileManager.default.removeItem(at: placesFile)
        } else {
            try? writePlaces(places)
        }
    }

    private func writePlaces(_ places: [String]) throws(NimbusError) {
        try store.createFolder(paths.data)
        do {
            try AtomicFile.write(try JSONEncoder().encode(places), to: placesFile)
        } catch let error as NimbusError {
            throw error
        } catch {
            throw NimbusError(.internalError, "could not encode \(placesFile.path)", cause: error)
        }
    }

    /// The definitions at `place`, or an error when no driver knows it.
    func definitions(at place: String) throws(NimbusError) -> any MachineDefinitions {
        guard let definitions = hypervisor.drivers.definitions(at: place) else {
            throw NimbusError(.invalidArgument, "no driver keeps machine definitions at \(place)")
        }
        return definitions
    }

    // MARK: Machines whose folder is missing

    /// Whether a machine folder named in a definition is an instance folder of this store.
    func isThisStore(_ folder: String) -> Bool {
        URL(fileURLWithPath: folder).deletingLastPathComponent().standardizedFileURL.path
            == paths.instances.standardizedFileURL.path
    }

    /// Nimbus machines defined at `places` that belong to this store and whose instance folder is missing.
    func lostMachines(at places: [String]) async throws(NimbusError) -> [DefinedMachine] {
        var lost: [DefinedMachine] = []
        for place in places {
            for machine in try await definitions(at: place).definedMachines() where isThisStore(machine.folder) {
                guard let name = try? InstanceName(machine.name), !store.exists(name) else { continue }
                lost.append(machine)
            }
        }
        return lost.sorted { $0.name < $1.name }
    }

    /// `list`'s rows for the machines defined at the places the store knows whose folder is missing.
    func lostInstances() async -> [InstanceInfo] {
        var infos: [InstanceInfo] = []
        for place in knownPlaces(includingSpecs: false) {
            do throws(NimbusError) {
                infos += try await lostMachines(at: [place]).map(lostInfo)
            } catch {
                progress("warning: could not look for Nimbus machines on \(place): \(error.message)")
            }
        }
        return infos
    }

    /// The state a machine's definition keeps (as of the instance's last start), if it reads.
    func keptState(of machine: DefinedMachine) -> InstanceState? {
        machine.annotations[Annotation.state].flatMap { try? InstanceState.decode(Data($0.utf8)) }
    }

    /// The spec a machine's definition keeps (without user-data), if it reads.
    func keptSpec(of machine: DefinedMachine) -> InstanceSpec? {
        machine.annotations[Annotation.spec].flatMap { try? YAMLDecoder().decode(InstanceSpec.self, from: $0) }
    }

    func lostInfo(_ machine: DefinedMachine) -> InstanceInfo {
        let spec = keptSpec(of: machine)
        let state = keptState(of: machine)
        return InstanceInfo(
            name: machine.name, state: .missing, image: spec?.image ?? "?", imageVersion: state?.imageDescription,
            ipv4: [], ssh: nil, cpus: spec?.cpus ?? 0, memory: spec?.memory ?? ByteSize(bytes: 0), diskUsed: nil,
            diskSize: spec?.disk ?? ByteSize(bytes: 0), accelerator: state?.accelerator,
            acceleratorReason: state?.acceleratorReason, uptime: nil, cloudInit: nil,
            driver: spec?.driver.name ?? "?", host: machine.hostLabel,
            forwards: (spec?.forwards ?? []).map {
                "127.0.0.1:\($0.hostPort)->\($0.guestPort)/\($0.transport.rawValue)"
            },
            error:
                "its instance folder is missing; \(machine.label) is \(machine.state.rawValue): `nimbus recover \(machine.name)` rebuilds the folder from its metadata"
        )
    }

    // MARK: Recover

    /// Rebuilds the folders of every instance of this store whose folder is missing while its machine
    /// remains defined at `connect` (or at every place the store knows); returns their names.
    public func recoverLost(connect: String?) async throws -> [InstanceName] {
        let places = connect.map { [$0] } ?? knownPlaces()
        guard !places.isEmpty else {
            throw NimbusError(
                .notFound,
                "nothing to recover: this store knows no libvirt daemon; name one with `nimbus recover --connect URI`")
        }
        let lost = try await lostMachines(at: places)
        guard !lost.isEmpty else {
            throw NimbusError(
                .notFound,
                "nothing to recover: no Nimbus domain on \(places.joined(separator: ", ")) belongs to a missing instance of this store (\(paths.instances.path))"
            )
        }
        var recovered: [InstanceName] = []
        for machine in lost { recovered.append(try await rebuild(from: machine)) }
        return recovered
    }

    /// `recover NAME`: an instance of the store (deleted, or in the error state) as before; an instance
    /// whose folder is missing, rebuilt from its definition at `connect` or the places the store knows.
    public func recover(_ name: InstanceName, connect: String?) async throws {
        let places = connect.map { [$0] } ?? knownPlaces()
        if store.exists(name) {
            try await checkNoOtherDefinition(claims: name, at: places)
            try await recover(name)
            return
        }
        for place in places {
            switch try await definitions(at: place).definition(of: name.rawValue) {
            case .none:
                continue
            case .foreign(let label):
                throw NimbusError(
                    .alreadyExists,
                    "\(label) was not created by Nimbus (it has no Nimbus metadata): recover never touches it")
            case .nimbus(let machine):
                guard machine.folder == store.directory(name).machine.url.path else {
                    throw NimbusError(
                        .alreadyExists,
                        "\(machine.label) belongs to the Nimbus instance in \(machine.folder) (host \(machine.origin)), not to this store: recover it with that store's NIMBUS_HOME"
                    )
                }
                _ = try await rebuild(from: machine)
                return
            }
        }
        let searched =
            places.isEmpty
            ? "this store knows no libvirt daemon" : "nor is its domain on \(places.joined(separator: ", "))"
        throw NimbusError(
            .notFound,
            "instance \"\(name)\" does not exist, \(searched): `nimbus list` shows the instances, `nimbus recover --connect URI \(name)` looks on another daemon"
        )
    }

    /// An instance of the store whose folder the definition of another instance claims (the store was
    /// lost, and the name reused by a new instance): refused, naming both.
    func checkNoOtherDefinition(claims name: InstanceName, at places: [String]) async throws(NimbusError) {
        // An instance whose spec cannot be read is the old recover's to repair.
        guard let spec = try? store.loadSpec(name) else { return }
        let own = hypervisor.driver(for: spec).definitions?.place
        for place in places where place != own {
            // A place that does not answer cannot claim the folder; it must not block recovering the instance.
            guard case .nimbus(let machine)? = try? await definitions(at: place).definition(of: name.rawValue),
                machine.folder == store.directory(name).machine.url.path
            else { continue }
            throw NimbusError(
                .alreadyExists,
                "an instance named \"\(name)\" exists already (driver \(spec.driver.name)), and \(machine.label) is another instance of that name whose folder was lost: `nimbus delete --purge \(name)` first to recover the domain's, or leave the domain alone"
            )
        }
    }

    /// Writes a new instance folder from the machine's definition: instance.yaml, state.json, known_hosts
    /// and the driver's record of where the machine is defined.
    func rebuild(from machine: DefinedMachine) async throws -> InstanceName {
        let name = try InstanceName(machine.name)
        guard machine.folder == store.directory(name).machine.url.path else {
            throw NimbusError(
                .alreadyExists,
                "\(machine.label) belongs to the Nimbus instance in \(machine.folder), not to this store")
        }
        guard let specText = machine.annotations[Annotation.spec] else {
            throw NimbusError(
                .unsupported,
                "\(machine.label) has Nimbus metadata without the instance's spec (an older Nimbus made it): it cannot be rebuilt; `virsh -c \(machine.place) undefine --nvram \(machine.definitionName)` removes it"
            )
        }
        let spec: InstanceSpec
        do {
            spec = try YAMLDecoder().decode(InstanceSpec.self, from: specText)
        } catch {
            throw NimbusError(.io, "the spec in \(machine.label)'s metadata cannot be read", cause: error)
        }
        guard spec.name == name else {
            throw NimbusError(.io, "\(machine.label)'s metadata names instance \(name) but its spec \(spec.name)")
        }
        var state = keptState(of: machine) ?? InstanceState()
        state.sshPort = machine.sshPort ?? state.sshPort
        state.lastError = nil
        state.deleted = false
        state.cloudInitStatus = nil
        let recoveredState = state
        let definitions = try definitions(at: machine.place)
        try await store.withLock(name) { _ in
            guard !store.exists(name) else {
                throw NimbusError(
                    .alreadyExists,
                    "an instance named \"\(name)\" exists already: recover leaves it as it is; `nimbus list` shows it")
            }
            _ = try await store.create(spec) { staging in
                try AtomicFile.write(
                    Data((machine.annotations[Annotation.knownHosts] ?? "").utf8), to: staging.knownHosts)
                try await definitions.adopt(machine, in: staging.machine)
                return recoveredState
            }
        }
        try rememberPlace(machine.place)
        var message = "\(name): recovered from \(machine.label) (\(machine.state.rawValue))"
        if !machine.missingFiles.isEmpty {
            message +=
                "; these files of it went with the folder: \(machine.missingFiles.joined(separator: ", ")). "
                + (machine.state == .stopped
                    ? "It cannot start until they are back"
                    : "It runs on (QEMU holds them open), but will not start again once stopped: copy out what matters")
        }
        progress(message)
        return name
    }
}
