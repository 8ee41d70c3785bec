import Foundation
import NimbusCore
import NimbusMachines

/// The libvirt domain XML for a `MachineConfig`: the same machine `QEMUCommandLine.machine` builds, told
/// to libvirt. See README.md beside this file for the choices (networking, serial log, metadata).
public enum LibvirtDomainXML {
    /// The namespace of Nimbus's `<metadata>` element; a domain without it is not Nimbus's.
    public static let metadataNamespace = "https://nimbus.dev/xmlns/instance/1"
    /// The namespace of libvirt's QEMU command-line passthrough.
    public static let qemuNamespace = "http://libvirt.org/schemas/domain/qemu/1.0"

    /// The domain name for a machine: prefixed, so `virsh list` shows what is Nimbus's at a glance and a
    /// user's own `web` domain does not collide with Nimbus's instance `web`.
    public static func domainName(for machine: String) -> String { "nimbus-\(machine)" }

    /// A uid:gid QEMU runs as (`<seclabel type='static' model='dac' relabel='no'>`), so libvirt neither
    /// chowns the user's files nor needs them readable by libvirt-qemu. Only for local URIs.
    public struct Owner: Sendable, Hashable {
        public var uid: UInt32
        public var gid: UInt32
        public init(uid: UInt32, gid: UInt32) {
            self.uid = uid
            self.gid = gid
        }

        /// The calling process's user.
        public static var current: Owner { Owner(uid: getuid(), gid: getgid()) }

        /// The group QEMU runs with. libvirt keeps each domain's private files (its master key, monitor
        /// socket) under /var/lib/libvirt/qemu, which Debian makes 0750 libvirt-qemu:libvirt-qemu: a QEMU
        /// of any other user and group cannot reach them and exits at start ("Unable to read
        /// .../master-key.aes: Permission denied"). So a user's QEMU runs with the libvirt-qemu group (the
        /// user's own files stay the user's: QEMU opens them by its uid); root's keeps root's group.
        var processGroup: UInt32 {
            guard uid != 0, let group = getgrnam("libvirt-qemu") else { return gid }
            return group.pointee.gr_gid
        }
    }

    /// What the metadata element records about the instance behind a domain: enough to find its folder,
    /// and (`annotations`) what its owner keeps to rebuild that folder when it is lost (`nimbus recover`).
    public struct Metadata: Sendable, Hashable {
        /// The instance (machine) name.
        public var name: String
        /// The machine folder on the host that created the domain.
        public var folder: String
        /// The host that created it.
        public var origin: String
        /// The host port forwarded to the guest's SSH at the last start.
        public var sshPort: UInt16?
        /// `MachineConfig.annotations`: opaque texts by key (letters and digits), stored base64 so any bytes
        /// survive libvirt's XML round trip.
        public var annotations: [String: String]

        public init(
            name: String, folder: String, origin: String, sshPort: UInt16? = nil, annotations: [String: String] = [:]
        ) {
            self.name = name
            self.folder = folder
            self.origin = origin
            self.sshPort = sshPort
            self.annotations = annotations
        }

        /// The element, as libvirt stores it and `virDomainGetMetadata` returns it.
        public var element: String { element(prefix: "nimbus") }

        /// The element with `prefix` on every name and the namespace declared, or with neither: what
        /// `virDomainSetMetadata` takes, as it puts the element in the namespace and prefix it is given.
        public func element(prefix: String?) -> String {
            let p = prefix.map { "\($0):" } ?? ""
            let declaration = prefix.map { " xmlns:\($0)=\"\(metadataNamespace)\"" } ?? ""
            var text =
                "<\(p)instance\(declaration)>"
                + "<\(p)name>\(escape(name))</\(p)name>"
                + "<\(p)folder>\(escape(folder))</\(p)folder>"
                + "<\(p)origin>\(escape(origin))</\(p)origin>"
            if let sshPort { text += "<\(p)sshPort>\(sshPort)</\(p)sshPort>" }
            for key in annotations.keys.sorted() where Self.isAnnotationKey(key) {
                let value = Data((annotations[key] ?? "").utf8).base64EncodedString()
                text += "<\(p)annotation key=\"\(key)\">\(value)</\(p)annotation>"
            }
            return text + "</\(p)instance>"
        }

        /// Annotation keys are plain words, so they need no escaping and read back by a simple pattern.
        static func isAnnotationKey(_ key: String) -> Bool {
            !key.isEmpty && key.unicodeScalars.allSatisfy { CharacterSet.alphanumerics.contains($0) && $0.isASCII }
        }

        /// Reads the element back from `virDomainGetMetadata`, which looks it up by Nimbus's namespace and
        /// returns it with or without a prefix (libvirt 9.0 drops it); nil when it is not an instance element.
        public init?(element text: String) {
            let trimmed = text.trimmingCharacters(in: .whitespacesAndNewlines)
            guard
                trimmed.hasPrefix("<instance")
                    || trimmed.range(of: "^<[A-Za-z0-9_]+:instance[ >]", options: .regularExpression) != nil
            else { return nil }
            func field(_ name: String) -> String? {
                guard let open = text.range(of: ":\(name)>") ?? text.range(of: "<\(name)>") else { return nil }
                let rest = text[open.upperBound...]
                guard let close = rest.range(of: "</") else { return nil }
                return unescape(String(rest[..<close.lowerBound]))
            }
            guard let name = field("name"), let folder = field("folder") else { return nil }
            var annotations: [String: String] = [:]
            // libxml2 writes the attribute with double quotes; accept single ones too.
            let pattern = #"<(?:[A-Za-z0-9_]+:)?annotation key=["']([A-Za-z0-9]+)["']>([A-Za-z0-9+/=]*)</"#
            if let expression = try? NSRegularExpression(pattern: pattern) {
                let range = NSRange(text.startIndex..., in: text)
                for match in expression.matches(in: text, range: range) {
                    guard let key = Range(match.range(at: 1), in: text),
                        let value = Range(match.range(at: 2), in: text),
                        let data = Data(base64Encoded: String(text[value]))
                    else { continue }
                    annotations[String(text[key])] = String(decoding: data, as: UTF8.self)
                }
            }
            self.init(
                name: name, folder: folder, origin: field("origin") ?? "",
                sshPort: field("sshPort").flatMap(UInt16.init),
                annotations: annotations)
        }
    }

    /// The file name of the per-domain UEFI variable store in the machine folder (raw: libvirt 9.0 has no
    /// qcow2 NVRAM, so it is not the QEMU driver's `efi-vars.qcow2`).
    public static let nvramName = "efi-vars.fd"

    /// Renders `config` as a domain document for the machine in `directory`.
    public static func render(
        _ config: MachineConfig,
        in directory: MachineDirectory,
        accelerator: Accelerator,
        sshHostPort: UInt16?,
        owner: Owner?,
        origin: String = ProcessInfo.processInfo.hostName,
        hostFiles: LibvirtRemote.HostFiles? = nil,
        uuid: String? = nil
    ) throws(NimbusError) -> String {
        try config.validate()
        guard config.machineType == .q35 else {
            throw NimbusError(
                .unsupported, "the libvirt driver runs q35 machines only: use --driver qemu for microvm")
        }
        let x = XMLWriter()
        x.line("<domain type='\(accelerator == .kvm ? "kvm" : "qemu")' xmlns:qemu='\(qemuNamespace)'>")
        try x.indent { () throws(NimbusError) in
            x.element("name", domainName(for: config.name))
            // Re-defining a persistent domain must keep its UUID, or libvirt refuses the name as taken.
            if let uuid { x.element("uuid", uuid) }
            x.line("<metadata>")
            x.indent {
                let metadata = Metadata(
                    name: config.name, folder: directory.url.path, origin: origin, sshPort: sshHostPort,
                    annotations: config.annotations)
                x.line(metadata.element)
            }
            x.line("</metadata>")
            x.line("<memory unit='MiB'>\(config.memory.bytes >> 20)</memory>")
            if config.shares.contains(where: { $0.transport == .virtiofs }) {
                // virtiofsd maps the guest's memory: a memfd shared with it.
                x.line("<memoryBacking>")
                x.indent {
                    x.line("<source type='memfd'/>")
                    x.line("<access mode='shared'/>")
                }
                x.line("</memoryBacking>")
            }
            x.line("<vcpu>\(config.cpus)</vcpu>")
            switch config.seed {
            case .ignition(let file):
                // Ignition's QEMU platform reads its config from this fw_cfg entry.
                x.line("<sysinfo type='fwcfg'>")
                x.indent { x.line("<entry name='opt/com.coreos/config' file='\(escape(file))'/>") }
                x.line("</sysinfo>")
            case .noCloudNet(let url):
                x.line("<sysinfo type='smbios'>")
                x.indent {
                    x.line("<system>")
                    x.indent { x.element("entry", "ds=nocloud;s=\(url)", attributes: "name='serial'") }
                    x.line("</system>")
                }
                x.line("</sysinfo>")
            case .none, .noCloud:
                break
            }
            x.line("<os>")
            x.indent {
                x.line("<type arch='x86_64' machine='q35'>hvm</type>")
                if case .uefi(let code, let variables) = config.firmware {
                    x.element("loader", code, attributes: "readonly='yes' type='pflash'")
                    x.element(
                        "nvram", hostFiles?.nvram ?? directory.url.appending(path: nvramName).path,
                        attributes: "template='\(escape(variables))'")
                }
                if let kernel = config.kernel {
                    x.element("kernel", kernel.kernel)
                    if let initrd = kernel.initrd { x.element("initrd", initrd) }
                    if let commandLine = kernel.commandLine { x.element("cmdline", commandLine) }
                }
                if case .noCloudNet = config.seed { x.line("<smbios mode='sysinfo'/>") }
            }
            x.line("</os>")
            x.line("<features>")
            // ACPI is what makes the power button (virDomainShutdown) reach the guest.
            x.indent {
                x.line("<acpi/>")
                x.line("<apic/>")
            }
            x.line("</features>")
            try cpu(config.cpuModel ?? accelerator.defaultCPUModel, into: x)
            x.line("<clock offset='utc'/>")
            x.element("on_poweroff", "destroy")
            x.element("on_reboot", "restart")
            x.element("on_crash", "destroy")
            x.line("<devices>")
            x.indent { devices(config, directory, serialLog: hostFiles?.serialLog, into: x) }
            x.line("</devices>")
            if let owner {
                x.line("<seclabel type='static' model='dac' relabel='no'>")
                x.indent { x.element("label", "+\(owner.uid):+\(owner.processGroup)") }
                x.line("</seclabel>")
            }
            let arguments = qemuArguments(
                config, sshHostPort: sshHostPort, sshAddress: hostFiles?.forwardAddress ?? "127.0.0.1")
            if !arguments.isEmpty {
                x.line("<qemu:commandline>")
                x.indent { for argument in arguments { x.line("<qemu:arg value='\(escape(argument))'/>") } }
                x.line("</qemu:commandline>")
            }
        }
        x.line("</domain>")
        return x.text
    }

    /// The `<cpu>` element for a QEMU `-cpu` value, so both drivers give the guest the same CPU: `host` is
    /// host-passthrough, `max` libvirt's maximum mode, anything else a custom model whose `+f`/`-f` (or
    /// `f=on`/`f=off`) features are required or disabled. `check='none'`: QEMU, not libvirt's CPU map, decides
    /// what the accelerator can offer (libvirt 9.0 would otherwise refuse TCG models it cannot compare).
    private static func cpu(_ model: String, into x: XMLWriter) throws(NimbusError) {
        let parts = model.split(separator: ",").map(String.init)
        switch parts.first {
        case "host" where parts.count == 1:
            x.line("<cpu mode='host-passthrough' check='none'/>")
        case "max" where parts.count == 1:
            x.line("<cpu mode='maximum' check='none'/>")
        default:
            var features: [(policy: String, name: String)] = []
            for part in parts.dropFirst() {
                if part.hasPrefix("+") {
                    features.append(("require", String(part.dropFirst())))
                } else if part.hasPrefix("-") {
                    features.append(("disable", String(part.dropFirst())))
                } else if part.hasSuffix("=on") {
                    features.append(("require", String(part.dropLast(3))))
                } else if part.hasSuffix("=off") {
                    features.append(("disable", String(part.dropLast(4))))
                } else {
                    throw NimbusError(
                        .unsupported,
                        "CPU model option \"\(part)\" has no libvirt equivalent: give features as +name or -name, or use --driver qemu"
                    )
                }
            }
            x.line("<cpu mode='custom' match='exact' check='none'>")
            x.indent {
                x.element("model", parts.first ?? model, attributes: "fallback='forbid'")
                for feature in features {
                    x.line("<feature policy='\(feature.policy)' name='\(escape(feature.name))'/>")
                }
            }
            x.line("</cpu>")
        }
    }

    /// The QEMU arguments passed through: user-mode networking with the forwards, then the user's own.
    static func qemuArguments(_ config: MachineConfig, sshHostPort: UInt16?, sshAddress: String = "127.0.0.1")
        -> [String]
    {
        var arguments: [String] = []
        if config.network.mode == .user {
            var rules: [String] = []
            if config.network.forwardSSH, let sshHostPort { rules.append("tcp:\(sshAddress):\(sshHostPort)-:22") }
            for forward in config.network.forwards {
                rules.append(
                    "\(forward.transport.rawValue):\(forward.hostAddress):\(forward.hostPort)-:\(forward.guestPort)")
            }
            let netdev = (["user", "id=nimbus-net0"] + rules.map { "hostfwd=\(MachineConfig.qemuEscape($0))" })
                .joined(separator: ",")
            // An explicit slot on the root bus: libvirt does not know this device, and QEMU would otherwise give
            // it the first free slot, which libvirt assigns to its own first root port. libvirt fills root
            // ports from slot 1 upward and integrated ICH9 functions from 0x1f downward; 0x10 is neither.
            arguments += [
                "-netdev", netdev,
                // No option ROM, as with the QEMU driver: no network boot, and iPXE's start costs time under TCG.
                "-device",
                "virtio-net-pci,netdev=nimbus-net0,mac=\(config.macAddress),bus=pcie.0,addr=0x10,romfile=",
            ]
        }
        return arguments + config.extraArguments
    }

    /// XML-escapes text for an element or a single-quoted attribute.
    static func escape(_ text: String) -> String {
        var result = ""
        for character in text {
            switch character {
            case "&": result += "&amp;"
            case "<": result += "&lt;"
            case ">": result += "&gt;"
            case "'": result += "&apos;"
            case "\"": result += "&quot;"
            default: result.append(character)
            }
        }
        return result
    }

    static func unescape(_ text: String) -> String {
        text.replacingOccurrences(of: "&lt;", with: "<").replacingOccurrences(of: "&gt;", with: ">")
            .replacingOccurrences(of: "&apos;", with: "'").replacingOccurrences(of: "&quot;", with: "\"")
            .replacingOccurrences(of: "&#39;", with: "'").replacingOccurrences(of: "&amp;", with: "&")
    }
}
