import Foundation
import NimbusCore
import NimbusMachines
import NimbusSeed

/// `doctor --security`: what an instance exposes to other users of the host and to the network, read from
/// the files and from /proc, for every driver whose machines run on this host.
///
/// - the store's folders and each instance folder are their owner's alone (no group or other bits);
/// - the keys, instance.yaml (user-data), the seed and Ignition config and every socket (QMP, console,
///   virtiofs) are too, whatever the folder;
/// - no process's command line carries a line of an instance's user-data or Ignition config;
/// - what an instance's processes listen on (port forwards) is bound to the loopback address only;
/// - SSH pins each instance's host key (its known_hosts names the key kept in its folder).
///
/// `/proc/PID/net/tcp` is read by hand: no package reads it, and it is a fixed, documented format.
extension InstanceManager {
    /// The audit's findings for the store and each instance; with `fix`, group and other permissions removed
    /// where they were found.
    public func securityAudit(fix: Bool) async -> [DoctorFinding] {
        let kept = [paths.data, paths.instances, paths.keys, paths.keys.appending(path: "id_ed25519")]
        var findings = Self.ownerOnly(kept, subject: "store", fix: fix)
        let commandLines = Self.commandLines()
        for name in store.names() {
            findings += await audit(name, commandLines: commandLines, fix: fix)
        }
        return findings
    }

    func audit(_ name: InstanceName, commandLines: [Int32: String], fix: Bool) async -> [DoctorFinding] {
        let subject = "instance \(name)"
        let dir = store.directory(name)
        let secrets = [dir.url, dir.spec, dir.seed, dir.ignition, dir.hostKey, dir.url.appending(path: "seed")]
        let sockets = ((try? FileManager.default.contentsOfDirectory(atPath: dir.url.path)) ?? []).filter {
            $0.hasSuffix(".sock")
        }.map { dir.url.appending(path: $0) }
        var findings = Self.ownerOnly(secrets + sockets, subject: subject, fix: fix)
        guard let spec = try? store.loadSpec(name) else { return findings }

        // The user's configuration, line by line: none may show on a command line.
        let configuration = [spec.userDataEncoding == .text ? spec.userData : nil, spec.ignition].compactMap { $0 }
        let lines = Set(
            configuration.flatMap { $0.split(whereSeparator: \.isNewline) }.map {
                $0.trimmingCharacters(in: .whitespaces)
            }.filter { $0.count >= 12 && !$0.hasPrefix("#") })
        let exposed = commandLines.filter { _, line in lines.contains(where: line.contains) }.keys.sorted()
        findings.append(
            DoctorFinding(
                subject: subject,
                detail: exposed.isEmpty
                    ? "no command line carries its user-data (\(lines.count) lines looked for in \(commandLines.count) processes)"
                    : "its user-data shows on the command line of pid \(exposed.map(String.init).joined(separator: ", ")): every user of this host can read it",
                ok: exposed.isEmpty))

        let driver = hypervisor.driver(for: spec)
        let status = await driver.status(of: dir.machine)
        if status.state != .stopped, let pid = status.pid, driver.hostLabel == "local" {
            let open = ([pid] + driver.helperPIDs(of: dir.machine)).flatMap { Self.listening(pid: $0) }
                .filter { !$0.isLoopback }
            findings.append(
                DoctorFinding(
                    subject: subject,
                    detail: open.isEmpty
                        ? "its processes listen on the loopback address only"
                        : "its processes listen beyond this host on \(open.map(\.description).joined(separator: ", "))",
                    ok: open.isEmpty))
        }
        if let key = try? SSHKeyPair(openSSHPrivateKey: String(contentsOf: dir.hostKey, encoding: .utf8)) {
            let pinned = Self.isPinned(key, in: dir)
            findings.append(
                DoctorFinding(
                    subject: subject,
                    detail: pinned
                        ? "SSH pins its host key (StrictHostKeyChecking=yes with its own known_hosts)"
                        : "its known_hosts does not pin its host key: `nimbus doctor --fix` writes it again",
                    ok: pinned))
        }
        return findings
    }

    /// Findings on whether each of `urls` that exists is its owner's alone (no group or other bits): one for
    /// each that is not (with `fix`, those bits removed), or one saying all are.
    static func ownerOnly(_ urls: [URL], subject: String, fix: Bool) -> [DoctorFinding] {
        var findings: [DoctorFinding] = []
        var checked = 0
        for url in urls {
            var status = stat()
            guard lstat(url.path, &status) == 0 else { continue }
            checked += 1
            let mode = status.st_mode & 0o7777
            guard mode & 0o077 != 0 else { continue }
            var finding = DoctorFinding(
                subject: subject,
                detail: "\(url.path) is mode \(String(mode, radix: 8)): other users of this host can reach it",
                ok: false)
            if fix, chmod(url.path, mode & 0o7700) == 0 {
                finding.fixed = true
                finding.detail += "; now \(String(mode & 0o7700, radix: 8))"
            }
            findings.append(finding)
        }
        guard findings.isEmpty else { return findings }
        let names = urls.filter { FileManager.default.fileExists(atPath: $0.path) }.map(\.lastPathComponent)
        return [
            DoctorFinding(
                subject: subject, detail: "its owner's alone: \(names.joined(separator: ", ")) (\(checked) checked)",
                ok: true)
        ]
    }

    /// Every process's command line, its arguments joined by spaces.
    static func commandLines() -> [Int32: String] {
        var lines: [Int32: String] = [:]
        for entry in (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? [] {
            guard let pid = Int32(entry), let data = FileManager.default.contents(atPath: "/proc/\(entry)/cmdline")
            else { continue }
            lines[pid] = String(decoding: data.map { $0 == 0 ? 0x20 : $0 }, as: UTF8.self)
        }
        return lines
    }

    /// An address a process listens on.
    struct ListeningSocket: CustomStringConvertible, Equatable {
        var address: String
        var port: UInt16
        var isLoopback: Bool { address.hasPrefix("127.") || address == "::1" }
        var description: String { address.contains(":") ? "[\(address)]:\(port)" : "\(address):\(port)" }
    }

    /// The TCP sockets `pid` listens on and the UDP sockets it has bound, from /proc/PID/fd and its network
    /// namespace's /proc/PID/net/{tcp,tcp6,udp,udp6}.
    static func listening(pid: Int32) -> [ListeningSocket] {
        let fds = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/fd")) ?? []
        let inodes = Set(
            fds.compactMap { fd -> String? in
                guard let target = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(pid)/fd/\(fd)"),
                    target.hasPrefix("socket:[")
                else { return nil }
                return String(target.dropFirst(8).dropLast())
            })
        var sockets: [ListeningSocket] = []
        for table in ["tcp", "tcp6", "udp", "udp6"] {
            guard let text = try? String(contentsOfFile: "/proc/\(pid)/net/\(table)", encoding: .utf8) else {
                continue
            }
            for row in text.split(separator: "\n").dropFirst() {
                let fields = row.split(separator: " ")
                // sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid timeout inode
                guard fields.count > 9, inodes.contains(String(fields[9])) else { continue }
                // TCP: only listening sockets (0A); UDP: every bound one (07).
                guard fields[3] == (table.hasPrefix("tcp") ? "0A" : "07") else { continue }
                let local = fields[1].split(separator: ":")
                guard local.count == 2, let port = UInt16(local[1], radix: 16),
                    let address = Self.address(hex: String(local[0]))
                else { continue }
                sockets.append(ListeningSocket(address: address, port: port))
            }
        }
        return sockets
    }

    /// An address as /proc/net/tcp{,6} writes it: 32-bit words in the host's (little-endian) order.
    static func address(hex: String) -> String? {
        var bytes: [UInt8] = []
        var index = hex.startIndex
        while index < hex.endIndex {
            let next = hex.index(index, offsetBy: 8, limitedBy: hex.endIndex) ?? hex.endIndex
            guard let word = UInt32(hex[index..<next], radix: 16) else { return nil }
            bytes += [UInt8(word & 0xFF), UInt8(word >> 8 & 0xFF), UInt8(word >> 16 & 0xFF), UInt8(word >> 24)]
            index = next
        }
        switch bytes.count {
        case 4:
            return bytes.map(String.init).joined(separator: ".")
        case 16:
            if bytes[0..<10].allSatisfy({ $0 == 0 }), bytes[10] == 0xFF, bytes[11] == 0xFF {
                return bytes[12...].map(String.init).joined(separator: ".")  // IPv4-mapped
            }
            if bytes[0..<15].allSatisfy({ $0 == 0 }) { return bytes[15] == 1 ? "::1" : "::" }
            return stride(from: 0, to: 16, by: 2).map {
                String(UInt16(bytes[$0]) << 8 | UInt16(bytes[$0 + 1]), radix: 16)
            }
            .joined(separator: ":")
        default:
            return nil
        }
    }
}
