import Foundation
import NimbusCore

#if canImport(Glibc)
    import Glibc
#endif

/// What the user asked for with `--accel`.
public enum AcceleratorChoice: String, Codable, Sendable, Hashable, CaseIterable {
    /// KVM when it can run an unmodified guest here, TCG otherwise.
    case auto
    /// KVM or an error saying why not.
    case kvm
    /// Software emulation, always available.
    case tcg
}

/// The accelerator a machine runs on.
public enum Accelerator: String, Codable, Sendable, Hashable {
    case kvm, tcg

    /// The CPU model a machine gets when its config names none.
    ///
    /// KVM: the host's CPU. TCG: QEMU's `qemu64` (the model libvirt and QEMU themselves default to) raised to
    /// x86-64-v2 (SSSE3, SSE4.1, SSE4.2, POPCNT; `qemu64` has CX16 and LAHF already), the level RHEL and
    /// CentOS Stream 9 need. Not `max`: it adds what TCG emulates slowly (AVX and AVX2, which glibc's string
    /// functions then use; 5-level paging), and QEMU spent ~20% more CPU time bringing a Debian 12 guest to
    /// cloud-init's end with it (bench/RESULTS.md, "CPU model and firmware under TCG"). A guest built for x86-64-v3 (RHEL 10) needs
    /// `--cpu-model max`; Nimbus says so when the guest's C library stops on it.
    public var defaultCPUModel: String {
        switch self {
        case .kvm: "host"
        case .tcg: "qemu64,+ssse3,+sse4.1,+sse4.2,+popcnt"
        }
    }
}

/// Facts about this host that decide the accelerator; they hold until the host reboots.
public struct HostFacts: Codable, Sendable, Hashable {
    /// What opening /dev/kvm gave.
    public enum KVMDevice: Codable, Sendable, Hashable {
        /// No /dev/kvm: no hardware virtualisation, or the kvm module is not loaded.
        case missing
        /// /dev/kvm exists but this user cannot open it read-write.
        case notAccessible(reason: String)
        /// /dev/kvm opened, and answered KVM_GET_API_VERSION.
        case opened(apiVersion: Int)
    }

    public var kvmDevice: KVMDevice
    /// The `kvm_pvm` module is loaded: /dev/kvm is a nested paravirtual KVM that runs only PVM-aware guest
    /// kernels. A stock kernel hangs silently and QEMU aborts on an MSR with `-cpu host` or `-cpu max`.
    public var paravirtualKVM: Bool
    /// /proc/sys/kernel/random/boot_id when the facts were gathered.
    public var bootID: String?

    public init(kvmDevice: KVMDevice, paravirtualKVM: Bool, bootID: String? = nil) {
        self.kvmDevice = kvmDevice
        self.paravirtualKVM = paravirtualKVM
        self.bootID = bootID
    }
}

/// The accelerator chosen, and why.
public struct AcceleratorDecision: Codable, Sendable, Hashable {
    public var accelerator: Accelerator
    /// One sentence for `nimbus info` and logs: why this accelerator.
    public var reason: String

    public init(accelerator: Accelerator, reason: String) {
        self.accelerator = accelerator
        self.reason = reason
    }

    /// The one-line notice to print when a machine falls back to TCG; nil on KVM.
    public var notice: String? {
        accelerator == .tcg
            ? "notice: using TCG software emulation, guests run 5-20x slower than on KVM (\(reason))" : nil
    }
}

/// Decides between KVM and TCG from facts about the host, and caches the facts per host boot.
public enum AcceleratorProbe {
    /// The KVM API version every KVM since Linux 2.6.22 reports.
    static let stableKVMAPIVersion = 12

    /// Decides for `choice` given `facts`. `--accel kvm` where KVM cannot run a stock guest is an error
    /// that says why; `auto` falls back to TCG and says why.
    public static func decide(_ choice: AcceleratorChoice, facts: HostFacts) throws(NimbusError) -> AcceleratorDecision
    {
        if choice == .tcg { return AcceleratorDecision(accelerator: .tcg, reason: "requested with --accel tcg") }
        let unusable: String?
        switch facts.kvmDevice {
        case .missing:
            unusable = "/dev/kvm does not exist (no hardware virtualisation, or the kvm module is not loaded)"
        case .notAccessible(let reason):
            unusable = "/dev/kvm cannot be opened (\(reason)): add your user to the kvm group"
        case .opened(let version) where version != stableKVMAPIVersion:
            unusable = "/dev/kvm reports KVM API version \(version), not \(stableKVMAPIVersion)"
        case .opened:
            unusable =
                facts.paravirtualKVM
                ? "/dev/kvm is a nested paravirtual KVM (kvm_pvm is loaded) on which a stock guest kernel hangs"
                : nil
        }
        guard let unusable else {
            return AcceleratorDecision(accelerator: .kvm, reason: "/dev/kvm is usable (KVM API \(stableKVMAPIVersion))")
        }
        guard choice == .auto else {
            throw NimbusError(.unsupported, "--accel kvm is not possible here: \(unusable); use --accel tcg or auto")
        }
        return AcceleratorDecision(accelerator: .tcg, reason: unusable)
    }

    /// Looks at this host: /dev/kvm, its API version, the kvm_pvm module, the boot id.
    public static func gatherFacts(root: String = "") -> HostFacts {
        let paravirtual = FileManager.default.fileExists(atPath: root + "/sys/module/kvm_pvm")
        let bootID = (try? String(contentsOfFile: root + "/proc/sys/kernel/random/boot_id", encoding: .utf8))?
            .trimmingCharacters(in: .whitespacesAndNewlines)
        let device = root + "/dev/kvm"
        guard FileManager.default.fileExists(atPath: device) else {
            return HostFacts(kvmDevice: .missing, paravirtualKVM: paravirtual, bootID: bootID)
        }
        let fd = open(device, O_RDWR | O_CLOEXEC)
        guard fd >= 0 else {
            let reason = String(cString: strerror(errno))
            return HostFacts(kvmDevice: .notAccessible(reason: reason), paravirtualKVM: paravirtual, bootID: bootID)
        }
        defer { close(fd) }
        // KVM_GET_API_VERSION is _IO(KVMIO = 0xAE, 0x00).
        let version = ioctl(fd, 0xAE00)
        return HostFacts(kvmDevice: .opened(apiVersion: Int(version)), paravirtualKVM: paravirtual, bootID: bootID)
    }

    /// The facts for this boot of the host: read from `cache/accelerator.json` when it was written
    /// during this boot, gathered (and cached) otherwise. A cache that cannot be written is not an error.
    public static func facts(cachedIn cache: URL?, gather: () -> HostFacts = { gatherFacts() }) -> HostFacts {
        let currentBoot = (try? String(contentsOfFile: "/proc/sys/kernel/random/boot_id", encoding: .utf8))?
            .trimmingCharacters(in: .whitespacesAndNewlines)
        let file = cache?.appending(path: "accelerator.json")
        if let file, let currentBoot, let data = try? Data(contentsOf: file),
            let cached = try? JSONDecoder().decode(HostFacts.self, from: data), cached.bootID == currentBoot
        {
            return cached
        }
        var facts = gather()
        if facts.bootID == nil { facts.bootID = currentBoot }
        if let cache, let file, facts.bootID != nil {
            try? FileManager.default.createDirectory(at: cache, withIntermediateDirectories: true)
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.sortedKeys, .prettyPrinted]
            if let data = try? encoder.encode(facts) { try? AtomicFile.write(data, to: file) }
        }
        return facts
    }

    /// Decides for `choice` on this host, with the facts cached under `cache` (NimbusPaths.hostFacts).
    public static func resolve(_ choice: AcceleratorChoice, cache: URL?) throws(NimbusError) -> AcceleratorDecision {
        if choice == .tcg { return try decide(.tcg, facts: HostFacts(kvmDevice: .missing, paravirtualKVM: false)) }
        return try decide(choice, facts: facts(cachedIn: cache))
    }
}
