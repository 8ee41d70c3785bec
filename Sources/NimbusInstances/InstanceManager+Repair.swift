import Foundation
import NimbusCore
import NimbusDisks
import NimbusImages
import NimbusMachines
import NimbusSeed

/// `doctor`'s look at the files Nimbus keeps for an instance and reads back (instance.yaml, state.json,
/// known_hosts), and what `--fix` makes again from the rest of the folder.
///
/// What is repaired is what can be made again without a guess: state.json (from the folder, or from a libvirt
/// domain's copy), known_hosts (from the kept host key), instance.yaml only from a libvirt domain's copy. A
/// QEMU instance's damaged instance.yaml is the user's definition: it is named, never rewritten.
extension InstanceManager {
    /// Findings on `name`'s files; with `fix`, the repairs (under the instance's lock, skipped while another
    /// `nimbus` holds it). `readable` is false while instance.yaml or state.json still does not load.
    func checkFiles(_ name: InstanceName, fix: Bool) async -> (findings: [DoctorFinding], readable: Bool) {
        let subject = "instance \(name)"
        let dir = store.directory(name)
        var findings: [DoctorFinding] = []
        var readable = true
        func repairing(_ problem: String, _ repair: () async throws -> String) async {
            var finding = DoctorFinding(subject: subject, detail: problem, ok: false)
            if fix {
                do {
                    let done = try await store.withLockIfFree(name) { _ in try await repair() }
                    finding.detail += done.map { "; \($0)" } ?? "; not repaired: another nimbus works on it now"
                    finding.fixed = done != nil
                } catch {
                    finding.detail += "; not repaired: \((error as? NimbusError)?.message ?? "\(error)")"
                }
            }
            if !finding.fixed { readable = false }
            findings.append(finding)
        }

        func problem(_ error: NimbusError) -> String {
            error.code == .notFound ? "it is missing" : error.cause.map(NimbusConfig.describeDamage) ?? error.message
        }
        // The libvirt domain's copies, asked of its daemon once, and only for a damaged file.
        var asked = false
        var machine: DefinedMachine?
        func definition() async -> DefinedMachine? {
            if !asked { machine = await definedMachine(of: dir) }
            asked = true
            return machine
        }
        do {
            _ = try store.loadSpec(name)
        } catch {
            let problem = problem(error)
            if let kept = await definition().flatMap(keptSpec), kept.name == name {
                await repairing("instance.yaml is damaged (\(problem))") {
                    try InstanceStore.writeSpec(kept, to: dir.spec)
                    return "restored from the copy its libvirt domain keeps (without user-data, which its seed holds)"
                }
            } else {
                readable = false
                findings.append(
                    DoctorFinding(
                        subject: subject,
                        detail:
                            "instance.yaml is damaged (\(problem)); not touched: it is the instance's definition and no copy of it is kept: mend it by hand, or `nimbus delete --purge \(name)`",
                        ok: false))
            }
        }
        do {
            _ = try store.loadState(name)
        } catch {
            await repairing("state.json is damaged (\(problem(error)))") {
                let state = await rebuiltState(name, from: definition())
                try store.saveState(state, in: dir)
                let stopped = await hypervisor.driver(dir.machine).status(of: dir.machine).state == .stopped
                return stopped
                    ? "made again from the instance's folder"
                    : "made again from the instance's folder; its SSH port was only in the damaged file: `nimbus restart \(name)` forwards it again"
            }
        }
        if let hostKey = try? SSHKeyPair(openSSHPrivateKey: String(contentsOf: dir.hostKey, encoding: .utf8)),
            !Self.isPinned(hostKey, in: dir)
        {
            await repairing("known_hosts does not pin the instance's host key (damaged or edited), so SSH to it fails")
            {
                try InstanceBuilder.pin(hostKey, of: name, in: dir)
                return "written again from the host key kept in the instance's folder"
            }
        }
        return (findings, readable)
    }

    /// A state for `name` made again from what is left: the copy `machine`, its libvirt domain, keeps (as of
    /// its last start), else the folder: the base image from the overlay's header, the login user from the kind of
    /// configuration (Ignition is CoreOS's `core`), when it was made from instance.yaml's time. What only the
    /// lost file knew (the last start's port and accelerator, cloud-init's last result) comes back with the
    /// next start.
    func rebuiltState(_ name: InstanceName, from machine: DefinedMachine?) async -> InstanceState {
        let dir = store.directory(name)
        if var state = machine.flatMap(keptState) {
            state.lastError = nil
            return state
        }
        var state = InstanceState()
        state.complete = true  // a folder under its own name is a whole instance: launch renames it there last
        state.createdAt =
            (try? FileManager.default.attributesOfItem(atPath: dir.spec.path)[.modificationDate] as? Date)
            ?? Date()
        let coreOS = FileManager.default.fileExists(atPath: dir.ignition.path)
        state.sshUser = coreOS ? "core" : Self.defaultUser
        if let base = (try? DiskImage.inspect(dir.disk))?.backingPath(relativeTo: dir.disk),
            base.pathExtension == "img"
        {
            let digest = base.deletingPathExtension().lastPathComponent
            state.imageDigest = digest
            if let image = await (try? imageStore(offline: true))?.entry(digest) {
                state.imageDescription = InstanceBuilder.describe(image)
            }
        }
        return state
    }

    /// The definition (a libvirt domain) of the machine in `dir`, at the places this store knows; nil for a
    /// QEMU instance, or when no daemon answers.
    func definedMachine(of dir: InstanceDirectory) async -> DefinedMachine? {
        for place in knownPlaces(includingSpecs: false) {
            guard let machines = try? await definitions(at: place).definedMachines() else { continue }
            if let machine = machines.first(where: { $0.folder == dir.url.path }) { return machine }
        }
        return nil
    }
}
