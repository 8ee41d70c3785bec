import Foundation
import NimbusCore
import NimbusDisks
import NimbusImages
import NimbusMachines

/// Decides the machine an instance runs as: checks a spec against its driver's host before anything is
/// written, makes its `auto` choices concrete once at launch, and turns the spec into the `MachineConfig`
/// the driver starts.
struct MachinePlanner: Sendable {
    /// The instance's driver, asked for its host's facts.
    let drivers: InstanceDrivers
    /// Where the volumes' disks are.
    let volumes: VolumeStore
    /// Messages for people, one line each.
    let progress: @Sendable (String) -> Void

    /// What launch checks of a spec on its own, before asking the driver anything: enough memory to boot,
    /// CPUs that can exist, a CPU model that is a `-cpu` value.
    func check(_ spec: InstanceSpec) throws(NimbusError) {
        guard spec.memory >= .mebibytes(128) else {
            throw NimbusError(
                .invalidArgument, "--memory \(spec.memory) is too small to boot a cloud image: ask for at least 128M")
        }
        guard (1...255).contains(spec.cpus) else {
            throw NimbusError(.invalidArgument, "--cpus \(spec.cpus) is out of range: use 1 to 255")
        }
        if let cpuModel = spec.cpuModel { try MachineConfig.checkCPUModel(cpuModel) }
    }

    /// What launch checks of a spec against the host its machine runs on, once the driver is known to answer:
    /// the memory fits that host's (the driver's, so a remote host is judged by its own), and the driver can
    /// serve the mounts.
    func checkHost(_ spec: InstanceSpec) async throws(NimbusError) {
        let driver = drivers.driver(for: spec)
        if let total = try await driver.hostMemory(), spec.memory > total {
            let host = driver.hostLabel == "local" ? "this host's" : "\(driver.hostLabel)'s"
            throw NimbusError(
                .invalidArgument, "--memory \(spec.memory) is more than \(host) \(total.humanReadable): ask for less")
        }
        if spec.mountType == .virtiofs, !spec.mounts.isEmpty,
            let reason = driver.shareProblem(.virtiofs)
        {
            throw NimbusError(
                .unsupported, "--mount-type virtiofs cannot serve here: \(reason); or use --mount-type 9p")
        }
    }

    /// `auto` firmware made concrete, once, at launch, so every start of the instance boots the same way.
    ///
    /// BIOS when the machine runs under TCG and can boot without UEFI (the image has BIOS boot code, or a
    /// kernel is given directly): under TCG, OVMF alone runs ~6 s before the bootloader and the guest then
    /// does more work at boot (EFI variables, pstore), SeaBIOS takes well under a second (bench/RESULTS.md,
    /// "CPU model and firmware under TCG"). UEFI otherwise: under KVM both are quick and UEFI is what images expect first.
    func resolveFirmware(_ spec: InstanceSpec, image: CachedImage) async throws -> FirmwareChoice {
        guard spec.firmware == .auto else { return spec.firmware }
        let accelerator = try await drivers.driver(for: spec).accelerator(for: spec.accelerator).accelerator
        guard accelerator == .tcg else { return .uefi }
        if spec.kernel != nil { return .bios }
        guard try await DiskImage.bootsByBIOS(image.url) else { return .uefi }
        progress(
            "\(spec.name): firmware bios: the image boots by BIOS, which starts ~5 s sooner than UEFI under TCG (--firmware uefi for UEFI)"
        )
        return .bios
    }

    /// `auto` mounts made concrete, once, at launch (the guest's fstab names the type): virtiofs, unless the
    /// instance's driver says it cannot serve it here (the QEMU driver without a virtiofsd), then 9p with a
    /// warning.
    func resolveMountType(_ spec: InstanceSpec) -> MountType {
        guard !spec.mounts.isEmpty else { return spec.mountType == .auto ? .virtiofs : spec.mountType }
        var type = spec.mountType
        if type == .auto {
            if let reason = drivers.driver(for: spec).shareProblem(.virtiofs) {
                progress("\(spec.name): warning: mounting over 9p, as virtiofs cannot serve here: \(reason)")
                type = .ninep
            } else {
                type = .virtiofs
            }
        }
        if type == .ninep {
            progress(
                "\(spec.name): warning: many cloud kernels cannot mount 9p (Debian's cloud kernel has none); launch fails if the guest cannot"
            )
        }
        return type
    }

    /// The machine an instance runs as; `seedURL` is where a seed served over HTTP is (no seed disk then).
    func machineConfig(_ spec: InstanceSpec, state: InstanceState, in dir: InstanceDirectory, seedURL: String? = nil)
        -> MachineConfig
    {
        var machine = MachineConfig(name: spec.name.rawValue)
        machine.cpus = spec.cpus
        machine.memory = spec.memory
        machine.disks = [
            MachineConfig.Disk(path: dir.disk.path, volumeKey: RootSwap.record(at: dir.rootRecord)?.volumeKey)
        ]
        if spec.ephemeral != nil {
            machine.disks.append(MachineConfig.Disk(path: dir.ephemeralDisk.path, format: .raw))
        }
        if FileManager.default.fileExists(atPath: dir.ignition.path) {
            machine.seed = .ignition(config: dir.ignition.path)
        } else if let seedURL {
            machine.seed = .noCloudNet(url: seedURL)
        } else {
            machine.seed = .noCloud(iso: dir.seed.path)
        }
        machine.firmware = spec.firmware == .bios ? .bios : .uefi()
        machine.cpuModel = spec.cpuModel
        machine.kernel = spec.kernel
        machine.network.forwards = spec.forwards
        // Keep the port of the last start when it is still free, so ssh-config blocks stay valid.
        // On a remote host only that host can tell; the driver tries another port when it is taken.
        machine.network.sshHostPort = state.sshPort.flatMap { state.sshHost != nil || Loopback.isFree($0) ? $0 : nil }
        machine.shares = spec.mounts.enumerated().map { index, mount in
            MachineConfig.Share(
                hostPath: mount.hostPath, tag: InstanceBuilder.shareTag(index),
                transport: spec.mountType == .ninep ? .ninep : .virtiofs)
        }
        // Volumes after the root and scratch disks; the guest finds each by its serial, not its order.
        machine.disks += spec.volumes.map {
            MachineConfig.Disk(
                path: volumes.disk($0.volume).path, serial: VolumeSpec.serial(of: $0.volume),
                dataVolume: (try? volumes.load($0.volume))?.libvirt?.volume)
        }
        machine.accelerator = spec.accelerator
        return machine
    }
}
