import Foundation

/// The run state `query-status` reports (qapi/run-state.json `RunState`).
public struct QMPStatus: Sendable, Hashable {
    /// Whether the vCPUs run.
    public let running: Bool
    /// QEMU's RunState name: `running`, `paused`, `shutdown`, `guest-panicked`, `prelaunch`, `inmigrate`, ...
    public let status: String

    public init(running: Bool, status: String) {
        self.running = running
        self.status = status
    }
}

/// One block device from `query-block`.
public struct QMPBlockDevice: Sendable, Hashable {
    /// The device name (`-drive id=`), or the qdev path when the drive was created with -blockdev.
    public let device: String
    /// The qdev id or path of the guest device, when there is one.
    public let qdev: String?
    /// The image file, when a medium is inserted.
    public let file: String?
    /// The image format (`qcow2`, `raw`), when a medium is inserted.
    public let format: String?
    /// Whether the medium is read-only.
    public let readOnly: Bool
    /// Whether the device takes removable media (a CD-ROM).
    public let removable: Bool

    public init(device: String, qdev: String?, file: String?, format: String?, readOnly: Bool, removable: Bool) {
        self.device = device
        self.qdev = qdev
        self.file = file
        self.format = format
        self.readOnly = readOnly
        self.removable = removable
    }
}

extension QMPClient {
    /// `query-status`: whether the guest runs, and QEMU's run state.
    public func queryStatus() async throws(QMPError) -> QMPStatus {
        let reply = try await execute("query-status", timeout: .seconds(30))
        return QMPStatus(
            running: reply["running"]?.boolValue ?? false,
            status: reply["status"]?.stringValue ?? "unknown")
    }

    /// `system_powerdown`: presses the ACPI power button. The guest decides whether and when to shut
    /// down; watch for the SHUTDOWN event.
    public func systemPowerdown() async throws(QMPError) {
        try await execute("system_powerdown", timeout: .seconds(30))
    }

    /// `quit`: QEMU exits at once, as if the power cord were pulled (the guest is not asked).
    public func quit() async throws(QMPError) {
        try await execute("quit", timeout: .seconds(30))
    }

    /// `system_reset`: a hard reset of the machine.
    public func systemReset() async throws(QMPError) {
        try await execute("system_reset", timeout: .seconds(30))
    }

    /// `stop`: pauses the vCPUs (the guest's clock stops too).
    public func stop() async throws(QMPError) {
        try await execute("stop", timeout: .seconds(30))
    }

    /// `cont`: resumes the vCPUs after `stop`.
    public func cont() async throws(QMPError) {
        try await execute("cont", timeout: .seconds(30))
    }

    /// `query-block`: the block devices and their media.
    public func queryBlock() async throws(QMPError) -> [QMPBlockDevice] {
        let reply = try await execute("query-block", timeout: .seconds(30))
        return (reply.arrayValue ?? []).map { device in
            let inserted = device["inserted"]
            return QMPBlockDevice(
                device: device["device"]?.stringValue ?? "",
                qdev: device["qdev"]?.stringValue,
                file: inserted?["file"]?.stringValue,
                format: inserted?["drv"]?.stringValue,
                readOnly: inserted?["ro"]?.boolValue ?? false,
                removable: device["removable"]?.boolValue ?? false)
        }
    }

    /// Runs a human-monitor (HMP) command and returns what it printed.
    public func humanMonitorCommand(_ commandLine: String, timeout: Duration? = nil) async throws(QMPError) -> String {
        let reply = try await execute(
            "human-monitor-command", arguments: ["command-line": .string(commandLine)], timeout: timeout)
        return reply.stringValue ?? ""
    }

    /// `savevm TAG`: a live snapshot of the whole machine (RAM, devices, every writable disk) into the qcow2
    /// images. HMP reports failure only as printed text, so any output is an error.
    public func saveSnapshot(_ tag: String) async throws(QMPError) {
        try await silentHumanMonitorCommand("savevm", tag)
    }

    /// `loadvm TAG`: returns the machine to a snapshot taken with `saveSnapshot`.
    public func loadSnapshot(_ tag: String) async throws(QMPError) {
        try await silentHumanMonitorCommand("loadvm", tag)
    }

    /// `delvm TAG`: removes a snapshot from every disk.
    public func deleteSnapshot(_ tag: String) async throws(QMPError) {
        try await silentHumanMonitorCommand("delvm", tag)
    }

    private func silentHumanMonitorCommand(_ verb: String, _ tag: String) async throws(QMPError) {
        // HMP splits its arguments on spaces and takes no quoting; a tag with spaces would name another.
        guard !tag.isEmpty, !tag.contains(where: { $0.isWhitespace || $0.isNewline }) else {
            throw .humanMonitor(command: "\(verb) \(tag)", output: "a snapshot name must be non-empty, without spaces")
        }
        let commandLine = "\(verb) \(tag)"
        let output = try await humanMonitorCommand(commandLine)
        let trimmed = output.trimmingCharacters(in: .whitespacesAndNewlines)
        guard trimmed.isEmpty else { throw .humanMonitor(command: commandLine, output: trimmed) }
    }
}
