/// An asynchronous event QEMU sends between replies: `{"event": NAME, "data": {...}, "timestamp": {...}}`.
public struct QMPEvent: Sendable, Hashable {
    /// The events a machine's lifecycle turns on; everything else is `.other`.
    public enum Kind: Sendable, Hashable {
        /// The machine shut down; `data.reason` says why (`guest-shutdown`, `host-qmp-quit`, `host-signal`, ...).
        case shutdown
        /// ACPI power button pressed (system_powerdown).
        case powerdown
        /// The machine reset.
        case reset
        /// The vCPUs stopped (stop, savevm, an I/O error).
        case stop
        /// The vCPUs run again.
        case resume
        /// The guest kernel panicked (pvpanic).
        case guestPanicked
        case other(String)
    }

    /// The event name as QEMU spells it (`SHUTDOWN`).
    public let name: String
    /// The event's `data` member, `.null` when it has none.
    public let data: QMPValue
    /// Seconds since the epoch, from the event's `timestamp`.
    public let timestamp: Double?

    public init(name: String, data: QMPValue = .null, timestamp: Double? = nil) {
        self.name = name
        self.data = data
        self.timestamp = timestamp
    }

    /// The event as one of the lifecycle kinds.
    public var kind: Kind {
        switch name {
        case "SHUTDOWN": .shutdown
        case "POWERDOWN": .powerdown
        case "RESET": .reset
        case "STOP": .stop
        case "RESUME": .resume
        case "GUEST_PANICKED": .guestPanicked
        default: .other(name)
        }
    }

    /// `data.reason` of SHUTDOWN and RESET events (`guest-shutdown`, `host-qmp-quit`, ...).
    public var reason: String? { data["reason"]?.stringValue }
}

/// The greeting QEMU sends first: its version and capabilities.
public struct QMPGreeting: Sendable, Hashable {
    /// `major.minor.micro`.
    public let version: String
    /// The vendor's package string (`Debian 1:7.2+dfsg-7`).
    public let package: String
    /// Capabilities the server offers (`oob`); this client enables none.
    public let capabilities: [String]

    public init(version: String, package: String, capabilities: [String]) {
        self.version = version
        self.package = package
        self.capabilities = capabilities
    }
}
