import Foundation
import NimbusCore
import NimbusDisks
import NimbusMachines

/// One thing `doctor` looked at.
public struct DoctorFinding: Sendable, Equatable {
    /// What was checked (`qemu-system-x86_64`, `instance web`).
    public var subject: String
    /// What was found, or what was done.
    public var detail: String
    /// True when nothing is wrong; a false one fails `doctor` unless it is `fixed` or a `warning`.
    public var ok: Bool
    /// True when `--fix` repaired it.
    public var fixed: Bool = false
    /// True for a problem that slows or limits something without breaking it: reported, not a failure.
    public var warning: Bool = false

    /// A finding about `subject`.
    public init(subject: String, detail: String, ok: Bool, fixed: Bool = false, warning: Bool = false) {
        self.subject = subject
        self.detail = detail
        self.ok = ok
        self.fixed = fixed
        self.warning = warning
    }
}

extension InstanceManager {
    /// Checks the host (QEMU, qemu-img, OVMF, the accelerator, ssh) and the store (stale pidfiles and
    /// sockets, abandoned folders, orphaned QEMU processes, overlays whose base image is gone); with `fix`,
    /// repairs what is safe: nothing that holds a user's data is removed.
    public func doctor(fix: Bool) async -> [DoctorFinding] {
        var findings: [DoctorFinding] = []
        for (program, package) in [
            ("qemu-system-x86_64", "qemu-system-x86"), ("qemu-img", "qemu-utils"), ("ssh", "openssh-client"),
            ("mkfs.ext4", "e2fsprogs"),
        ] {
            let path = ProgramRunner.find(program)
            findings.append(
                DoctorFinding(
                    subject: program, detail: path ?? "missing: `apt-get install \(package)`", ok: path != nil))
        }
        for firmware in [MachineConfig.Firmware.ovmfCode, MachineConfig.Firmware.ovmfVariables] {
            let present = FileManager.default.fileExists(atPath: firmware)
            findings.append(
                DoctorFinding(
                    subject: "UEFI firmware",
                    detail: present ? firmware : "\(firmware) missing: `apt-get install ovmf`", ok: present))
        }
        do {
            let decision = try AcceleratorProbe.resolve(.auto, cache: paths.hostFacts)
            findings.append(
                DoctorFinding(
                    subject: "accelerator", detail: "\(decision.accelerator.rawValue): \(decision.reason)", ok: true))
        } catch {
            findings.append(DoctorFinding(subject: "accelerator", detail: "\(error)", ok: false))
        }
        for driver in hypervisor.drivers.hostDrivers() {
            findings += driver.hostFindings().map {
                DoctorFinding(subject: $0.subject, detail: $0.detail, ok: $0.ok, warning: $0.warning)
            }
        }
        findings += await checkStore(fix: fix)
        findings += await checkImageRecords(fix: fix)
        findings += await networks.doctor(fix: fix)
        return findings
    }

    func checkStore(fix: Bool) async -> [DoctorFinding] {
        var findings: [DoctorFinding] = []
        for folder in store.abandonedFolders() {
            var finding = DoctorFinding(
                subject: folder.lastPathComponent, detail: "left by a launch or delete that was interrupted", ok: false)
            if fix, (try? FileManager.default.removeItem(at: folder)) != nil {
                finding.fixed = true
                finding.detail += "; removed"
            }
            findings.append(finding)
        }
        for orphan in orphans() {
            var finding = DoctorFinding(
                subject: "\(orphan.program) pid \(orphan.pid)",
                detail: "runs for \(orphan.folder), which is not an instance",
                ok: false)
            if fix, kill(orphan.pid, SIGKILL) == 0 {
                finding.fixed = true
                finding.detail += "; killed"
            }
            findings.append(finding)
        }
        for name in store.names() {
            findings += await checkInstance(name, fix: fix)
        }
        return findings
    }

    /// Image records that do not load; with `fix`, each made again from its image or removed with it
    /// (`ImageStore.repair`).
    func checkImageRecords(fix: Bool) async -> [DoctorFinding] {
        guard let images = try? imageStore(offline: true) else { return [] }
        var findings: [DoctorFinding] = []
        for damaged in await images.damagedRecords() {
            var finding = DoctorFinding(
                subject: "image \(damaged.sha256.prefix(12))",
                detail: "its record \(damaged.record.path) is damaged (\(damaged.problem)): the image is not listed",
                ok: false)
            if fix {
                do {
                    finding.detail += "; " + (try await images.repair(damaged))
                    finding.fixed = true
                } catch {
                    finding.detail += "; " + error.message
                }
            }
            findings.append(finding)
        }
        return findings
    }

    func checkInstance(_ name: InstanceName, fix: Bool) async -> [DoctorFinding] {
        let subject = "instance \(name)"
        let dir = store.directory(name)
        var (findings, readable) = await checkFiles(name, fix: fix)
        guard readable else { return findings }
        let repaired = !findings.isEmpty
        if let info = try? DiskImage.inspect(dir.disk), let base = info.backingPath(relativeTo: dir.disk),
            !FileManager.default.fileExists(atPath: base.path)
        {
            findings.append(
                DoctorFinding(
                    subject: subject,
                    detail:
                        "its base image \(base.path) is gone from the cache: the instance cannot start; pull the image again or delete the instance",
                    ok: false))
        }
        let driver = hypervisor.driver(dir.machine)
        let status = await driver.status(of: dir.machine)
        if status.state == .stopped {
            for leftover in driver.leftovers(of: dir.machine) {
                var finding = DoctorFinding(subject: subject, detail: leftover.description, ok: false)
                if fix {
                    leftover.clear()
                    finding.fixed = true
                    finding.detail += "; \(leftover.clearedAs)"
                }
                findings.append(finding)
            }
        } else if status.state == .unresponsive {
            findings.append(
                DoctorFinding(
                    subject: subject, detail: "QEMU runs but does not answer on QMP: `nimbus stop --force \(name)`",
                    ok: false))
        }
        if findings.isEmpty || repaired && findings.allSatisfy(\.fixed) {
            let helpers = driver.helperPIDs(of: dir.machine)
            let detail =
                helpers.isEmpty
                ? status.state.rawValue
                : "\(status.state.rawValue), virtiofsd pid \(helpers.map(String.init).joined(separator: ", "))"
            findings.append(DoctorFinding(subject: subject, detail: detail, ok: true))
        }
        return findings
    }

    /// Processes the drivers started for instance folders of this store that no longer exist (a folder
    /// whose name starts with "." is a launch's or a delete's, never an instance).
    func orphans() -> [OrphanProcess] {
        hypervisor.drivers.hostDrivers().flatMap {
            $0.orphans(under: paths.instances) { folder in
                !(folder as NSString).lastPathComponent.hasPrefix(".")
                    && FileManager.default.fileExists(atPath: folder + "/instance.yaml")
            }
        }
    }
}
