import ArgumentParser
import NimbusInstances

/// The table, CSV, JSON and YAML forms of instance information.
enum InstanceTable {
    static let columns = [
        "name", "state", "image", "ipv4", "ssh", "cpus", "memory", "disk", "accel", "uptime", "cloud-init", "driver",
        "host",
    ]

    static func row(_ info: InstanceInfo) -> [String] {
        [
            info.name, info.state.rawValue, info.image + (info.update.map { " (update: \($0))" } ?? ""),
            info.ipv4.joined(separator: ","), info.ssh ?? "-",
            String(info.cpus), info.memory.humanReadable,
            "\(info.diskUsed.map(\.humanReadable) ?? "-")/\(info.diskSize.humanReadable)",
            info.accelerator ?? "-", info.uptime.map(formatUptime) ?? "-", info.cloudInit ?? "-",
            info.driver, info.host ?? "local",
        ]
    }

    static func render(_ infos: [InstanceInfo], format: OutputFormat) throws -> String {
        try OutputRenderer.render(infos, columns: columns, rows: infos.map(row), format: format)
    }

    static func details(_ info: InstanceInfo) -> String {
        var lines: [(String, String)] = [
            ("Name", info.name), ("State", info.state.rawValue), ("Image", info.image),
            ("Image version", info.imageVersion ?? "-"),
            ("IPv4", info.ipv4.isEmpty ? "-" : info.ipv4.joined(separator: ", ")),
            ("SSH", info.ssh ?? "-"), ("CPUs", String(info.cpus)), ("Memory", info.memory.humanReadable),
            ("Disk", "\(info.diskUsed.map(\.humanReadable) ?? "-") used of \(info.diskSize.humanReadable)"),
            (
                "Accelerator",
                [info.accelerator, info.acceleratorReason.map { "(\($0))" }].compactMap { $0 }.joined(separator: " ")
            ),
            ("Uptime", info.uptime.map(formatUptime) ?? "-"), ("cloud-init", info.cloudInit ?? "-"),
            ("Forwards", info.forwards.isEmpty ? "-" : info.forwards.joined(separator: ", ")),
            (
                "Networks",
                info.networks.isEmpty
                    ? "-"
                    : info.networks.map { "\($0.name) \($0.address) (\($0.mac))" }
                        .joined(separator: ", ")
            ),
            ("Volumes", info.volumes.isEmpty ? "-" : info.volumes.joined(separator: ", ")),
            ("Driver", info.driver), ("Host", info.host ?? "local"),
            ("Firmware", info.firmware ?? "-"), ("CPU model", info.cpuModel ?? "-"),
        ]
        if let update = info.update { lines.insert(("Update", "\(update) (`nimbus upgrade \(info.name)`)"), at: 4) }
        if let rollback = info.rollback {
            lines.insert(("Rollback", "\(rollback) (`nimbus rollback \(info.name)`)"), at: info.update == nil ? 4 : 5)
        }
        if let error = info.error { lines.append(("Error", error)) }
        let width = lines.map(\.0.count).max() ?? 0
        return lines.map { "\($0.0 + ":")\(String(repeating: " ", count: width - $0.0.count + 1))\($0.1)" }
            .joined(separator: "\n") + "\n"
    }

    static func formatUptime(_ seconds: Int) -> String {
        if seconds < 60 { return "\(seconds)s" }
        if seconds < 3600 { return "\(seconds / 60)m" }
        if seconds < 86400 { return "\(seconds / 3600)h\(seconds % 3600 / 60)m" }
        return "\(seconds / 86400)d\(seconds % 86400 / 3600)h"
    }
}
