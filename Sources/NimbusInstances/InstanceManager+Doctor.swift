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
    public var ok: Bool
    /// True when `--fix` repaired it.
    public var fixed: Bool = false
    /// True for a problem that slows or limits something without breaking it: reported, not a failure.
    public var warning: Bool = false
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
        if let reason = Virtiofsd.unavailableReason() {
            findings.append(
                DoctorFinding(
                    subject: "virtiofsd", detail: "\(reason); --mount falls back to 9p, which many cloud kernels lack",
                    ok: false, warning: true))
        } else {
            findings.append(DoctorFinding(subject: "virtiofsd", detail: Virtiofsd.program() ?? "", ok: true))
        }
        if ProgramRunner.find("libvirtd") != nil, let finding = Self.libvirtKVMAccess() { findings.append(finding) }
        findings += await checkStore(fix: fix)
        return findings
    }

    /// Whether libvirt's QEMU user can open `device`: nil when the device or the user does not exist.
    ///
    /// libvirtd probes QEMU as root but checks /dev/kvm as the user it runs QEMU as (`libvirt-qemu` on Debian).
    /// Without udev (containers, minimal VMs) /dev/kvm stays root's alone: root's probe finds KVM, the user's
    /// check does not, and libvirtd takes its capabilities cache for stale and probes QEMU again at every call,
    /// so each domain start takes minutes. A warning: the QEMU driver does not care.
    static func libvirtKVMAccess(device: String = "/dev/kvm", user: String = "libvirt-qemu") -> DoctorFinding? {
        var status = stat()
        guard stat(device, &status) == 0, let account = getpwnam(user) else { return nil }
        let uid = account.pointee.pw_uid
        let primary = account.pointee.pw_gid
        var count: Int32 = 64
        var groups = [gid_t](repeating: 0, count: Int(count))
        if getgrouplist(account.pointee.pw_name, primary, &groups, &count) < 0 {
            groups = [gid_t](repeating: 0, count: Int(count))
            _ = getgrouplist(account.pointee.pw_name, primary, &groups, &count)
        }
        let member = groups.prefix(Int(max(count, 0))).contains(status.st_gid) || primary == status.st_gid
        let readWrite: mode_t = status.st_uid == uid ? 0o600 : member ? 0o060 : 0o006
        if status.st_mode & readWrite == readWrite {
            return DoctorFinding(subject: "libvirt and \(device)", detail: "\(user) can open it", ok: true)
        }
        let group = getgrgid(status.st_gid).map { String(cString: $0.pointee.gr_name) } ?? String(status.st_gid)
        let mode = String(status.st_mode & 0o777, radix: 8)
        return DoctorFinding(
            subject: "libvirt and \(device)",
            detail:
                "\(user), the user libvirt runs QEMU as, cannot open it (mode \(mode), group \(group)): libvirtd will probe QEMU again at every call and each libvirt start takes minutes; do what udev does on a normal host: `chgrp kvm \(device) && chmod 0660 \(device)`",
            ok: false, warning: true)
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
        let orphans =
            orphanedQEMU().map { (program: "QEMU", pid: $0.pid, detail: "runs for \($0.folder)") }
            + orphanedVirtiofsd().map { (program: "virtiofsd", pid: $0.pid, detail: "serves \($0.folder)") }
        for orphan in orphans {
            var finding = DoctorFinding(
                subject: "\(orphan.program) pid \(orphan.pid)", detail: "\(orphan.detail), which is not an instance",
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

    func checkInstance(_ name: InstanceName, fix: Bool) async -> [DoctorFinding] {
        let subject = "instance \(name)"
        let dir = store.directory(name)
        guard (try? store.loadSpec(name)) != nil, (try? store.loadState(name)) != nil else {
            return [
                DoctorFinding(
                    subject: subject, detail: "its files cannot be read: `nimbus delete --purge \(name)`", ok: false)
            ]
        }
        var findings: [DoctorFinding] = []
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
        let status = await hypervisor.status(of: dir.machine)
        let machine = dir.machine
        if status.state == .stopped {
            let leftovers = [machine.pidFile, machine.qmpSocket].filter {
                FileManager.default.fileExists(atPath: $0.path)
            }
            if !leftovers.isEmpty {
                var finding = DoctorFinding(
                    subject: subject,
                    detail:
                        "stale \(leftovers.map(\.lastPathComponent).joined(separator: " and ")) of a QEMU that is gone",
                    ok: false)
                if fix {
                    for file in leftovers { try? FileManager.default.removeItem(at: file) }
                    finding.fixed = true
                    finding.detail += "; removed"
                }
                findings.append(finding)
            }
            let helpers = Virtiofsd.livePIDs(in: machine)
            if !helpers.isEmpty {
                var finding = DoctorFinding(
                    subject: subject,
                    detail:
                        "virtiofsd (pid \(helpers.map(String.init).joined(separator: ", "))) runs with no QEMU to serve (a start was interrupted)",
                    ok: false)
                if fix {
                    Virtiofsd.stopAll(in: machine)
                    finding.fixed = true
                    finding.detail += "; ended"
                }
                findings.append(finding)
            }
        } else if status.state == .unresponsive {
            findings.append(
                DoctorFinding(
                    subject: subject, detail: "QEMU runs but does not answer on QMP: `nimbus stop --force \(name)`",
                    ok: false))
        }
        if findings.isEmpty {
            let helpers = Virtiofsd.livePIDs(in: machine)
            let detail =
                helpers.isEmpty
                ? status.state.rawValue
                : "\(status.state.rawValue), virtiofsd pid \(helpers.map(String.init).joined(separator: ", "))"
            findings.append(DoctorFinding(subject: subject, detail: detail, ok: true))
        }
        return findings
    }

    /// virtiofsd processes started for an instance folder of this store that no longer exists (they carry
    /// their folder in `Virtiofsd.ownerVariable`).
    func orphanedVirtiofsd() -> [(pid: Int32, folder: String)] {
        let instances = paths.instances.path + "/"
        let marker = Array("\(Virtiofsd.ownerVariable)=".utf8)
        var orphans: [(Int32, String)] = []
        for entry in (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? [] {
            guard let pid = Int32(entry), PIDFile.isAlive(pid),
                let data = FileManager.default.contents(atPath: "/proc/\(entry)/environ"),
                let variable = data.split(separator: 0).first(where: { $0.starts(with: marker) })
            else { continue }
            let folder = String(decoding: variable.dropFirst(marker.count), as: UTF8.self)
            guard folder.hasPrefix(instances) else { continue }
            let name = (folder as NSString).lastPathComponent
            if name.hasPrefix(".") || !FileManager.default.fileExists(atPath: folder + "/instance.yaml") {
                orphans.append((pid, folder))
            }
        }
        return orphans
    }

    /// QEMU processes started for an instance folder of this store that no longer exists.
    func orphanedQEMU() -> [(pid: Int32, folder: String)] {
        let instances = paths.instances.path + "/"
        var orphans: [(Int32, String)] = []
        for entry in (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? [] {
            guard let pid = Int32(entry),
                let data = FileManager.default.contents(atPath: "/proc/\(entry)/cmdline")
            else { continue }
            let arguments = data.split(separator: 0).map { String(decoding: $0, as: UTF8.self) }
            guard arguments.first?.contains("qemu-system") == true,
                let pidfile = zip(arguments, arguments.dropFirst()).first(where: { $0.0 == "-pidfile" })?.1,
                pidfile.hasPrefix(instances)
            else { continue }
            let folder = (pidfile as NSString).deletingLastPathComponent
            let name = (folder as NSString).lastPathComponent
            if name.hasPrefix(".") || !FileManager.default.fileExists(atPath: folder + "/instance.yaml") {
                orphans.append((pid, folder))
            }
        }
        return orphans
    }
}
