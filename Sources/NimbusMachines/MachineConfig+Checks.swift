import Foundation
import NimbusCore

extension MachineConfig {
    /// Doubles commas, QEMU's escape for a comma inside an option value: both drivers run QEMU, and the
    /// libvirt one passes the user-mode network to it as QEMU options.
    public static func qemuEscape(_ value: String) -> String {
        value.replacingOccurrences(of: ",", with: ",,")
    }

    /// The guest's MAC address: the configured one, or a stable one in QEMU's 52:54:00 range derived from
    /// the name, so a restarted guest keeps its DHCP lease.
    public var macAddress: String {
        if let mac = network.macAddress { return mac }
        return Self.derivedMAC(name)
    }

    /// A MAC address stable for `text`: QEMU's locally administered 52:54:00 prefix and three bytes of
    /// `text`'s FNV-1a hash.
    public static func derivedMAC(_ text: String) -> String {
        let hash = fnv1a32(text)
        let bytes = [(hash >> 16) & 0xff, (hash >> 8) & 0xff, hash & 0xff]
        return "52:54:00:" + bytes.map { String(format: "%02x", $0) }.joined(separator: ":")
    }

    /// Checks that `model` is one QEMU `-cpu` option value: a model name, then comma-separated
    /// +feature/-feature/feature=value. Which names QEMU knows is QEMU's to say, at start.
    public static func checkCPUModel(_ model: String) throws(NimbusError) {
        let allowed = CharacterSet.alphanumerics.union(CharacterSet(charactersIn: "-_.,+="))
        guard let first = model.split(separator: ",", omittingEmptySubsequences: false).first, !first.isEmpty,
            model.unicodeScalars.allSatisfy(allowed.contains)
        else {
            throw NimbusError(
                .invalidArgument,
                "CPU model \"\(model)\" is not a model name with optional features, like max or qemu64,+sse4.2: see `qemu-system-x86_64 -cpu help`"
            )
        }
    }

    /// Checks what QEMU would otherwise reject late or obscurely; each message names the value and the fix.
    public func validate() throws(NimbusError) {
        func invalid(_ message: String) -> NimbusError { NimbusError(.invalidArgument, message) }
        guard !name.isEmpty else { throw invalid("a machine needs a name") }
        guard (1...255).contains(cpus) else {
            throw invalid("cpus \(cpus) is out of range: use 1 to 255")
        }
        guard memory.bytes >= 64 << 20, memory.bytes % (1 << 20) == 0 else {
            throw invalid("memory \(memory) is not usable: give at least 64M, in whole MiB (like 512M or 2G)")
        }
        if machineType == .microvm {
            guard kernel != nil else {
                throw invalid("the microvm machine type boots only a kernel given directly: add --kernel, or use q35")
            }
            guard firmware == .bios else {
                throw invalid("the microvm machine type has no UEFI: use --firmware bios with it")
            }
            guard !vnc else { throw invalid("the microvm machine type has no display for VNC: drop --vnc or use q35") }
        }
        if kernel?.kernel.isEmpty == true { throw invalid("--kernel needs a path") }
        if let cpuModel { try Self.checkCPUModel(cpuModel) }
        if network.mode != .user, !network.forwards.isEmpty {
            throw invalid(
                "port forwards need user-mode networking; with a bridge or tap, reach the guest at its own address")
        }
        var hostPorts = Set<String>()
        if network.forwardSSH, let ssh = network.sshHostPort { hostPorts.insert("tcp:\(ssh)") }
        for forward in network.forwards {
            guard hostPorts.insert("\(forward.transport.rawValue):\(forward.hostPort)").inserted else {
                throw invalid(
                    "host port \(forward.hostPort)/\(forward.transport.rawValue) is forwarded twice: give each forward its own host port"
                )
            }
        }
        if let mac = network.macAddress {
            let parts = mac.split(separator: ":")
            guard parts.count == 6, parts.allSatisfy({ $0.count == 2 && UInt8($0, radix: 16) != nil }) else {
                throw invalid("MAC address \"\(mac)\" is not six hex pairs like 52:54:00:12:34:56")
            }
        }
        var tags = Set<String>()
        for share in shares {
            guard !share.tag.isEmpty, share.tag.utf8.count <= 31, !share.tag.contains(",") else {
                throw invalid("mount tag \"\(share.tag)\" is not usable: mount tags are 1 to 31 bytes without commas")
            }
            if share.transport == .virtiofs, share.readOnly {
                throw invalid(
                    "share \(share.hostPath) is read-only, which virtiofs cannot enforce here: mount it read-only in the guest, or use 9p"
                )
            }
            guard tags.insert(share.tag).inserted else {
                throw invalid("mount tag \"\(share.tag)\" is used twice: give each share its own tag")
            }
        }
        for disk in disks where disk.path.isEmpty { throw invalid("a disk needs a path") }
    }
}
