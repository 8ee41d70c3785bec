/// An IPv4 address, as the 32-bit number it is.
public struct IPv4Address: Hashable, Sendable, Comparable, Codable, CustomStringConvertible {
    public let value: UInt32

    public init(_ value: UInt32) { self.value = value }

    /// Parses dotted-quad text (`192.168.100.10`); nil for anything else.
    public init?(_ text: some StringProtocol) {
        let parts = text.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 4 else { return nil }
        var value: UInt32 = 0
        for part in parts {
            guard (1...3).contains(part.count), part.allSatisfy(\.isASCII), let byte = UInt8(part),
                part == "0" || !part.hasPrefix("0")
            else { return nil }
            value = value << 8 | UInt32(byte)
        }
        self.value = value
    }

    public var description: String {
        [24, 16, 8, 0].map { String((value >> $0) & 0xff) }.joined(separator: ".")
    }

    public static func < (a: IPv4Address, b: IPv4Address) -> Bool { a.value < b.value }

    public init(from decoder: any Decoder) throws {
        let text = try decoder.singleValueContainer().decode(String.self)
        guard let address = IPv4Address(text) else {
            throw DecodingError.dataCorrupted(
                .init(codingPath: decoder.codingPath, debugDescription: "\"\(text)\" is not an IPv4 address"))
        }
        self = address
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(description)
    }
}

/// An IPv4 subnet in CIDR notation (`192.168.100.0/24`), always stored by its network address.
public struct IPv4Subnet: Hashable, Sendable, Codable, CustomStringConvertible {
    public let network: IPv4Address
    public let prefixLength: Int

    /// The subnet `address/prefix`; the address must be the network's own (no host bits set).
    public init(network: IPv4Address, prefixLength: Int) {
        self.network = network
        self.prefixLength = prefixLength
    }

    /// The subnet of `prefixLength` bits that holds `address` (an interface's address and its prefix).
    public init(containing address: IPv4Address, prefixLength: Int) {
        let mask: UInt32 = prefixLength == 0 ? 0 : UInt32.max << (32 - UInt32(prefixLength))
        self.init(network: IPv4Address(address.value & mask), prefixLength: prefixLength)
    }

    /// Parses `A.B.C.D/N`. Host bits must be zero, as in `ip route`; `what` names the input in errors.
    public init(parsing text: String, what: String) throws(NimbusError) {
        let parts = text.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count == 2, let address = IPv4Address(parts[0]), let prefix = Int(parts[1]),
            (0...32).contains(prefix)
        else {
            throw NimbusError(
                .invalidArgument, "\(what) \"\(text)\" is not an IPv4 subnet in CIDR notation, like 192.168.100.0/24")
        }
        let subnet = IPv4Subnet(network: address, prefixLength: prefix)
        guard subnet.network.value & subnet.mask == address.value else {
            throw NimbusError(
                .invalidArgument,
                "\(what) \"\(text)\" has host bits set: its network is \(IPv4Address(address.value & subnet.mask))/\(prefix)"
            )
        }
        self = subnet
    }

    /// The netmask as a number (`/24` is 0xffffff00).
    public var mask: UInt32 { prefixLength == 0 ? 0 : UInt32.max << (32 - UInt32(prefixLength)) }
    /// The netmask in dotted-quad form, for dnsmasq.
    public var netmask: IPv4Address { IPv4Address(mask) }
    /// The broadcast address.
    public var broadcast: IPv4Address { IPv4Address(network.value | ~mask) }
    /// The first usable address, which Nimbus gives the host's side (the bridge): `.1` in a /24.
    public var gateway: IPv4Address { IPv4Address(network.value + 1) }
    /// The addresses guests may have: all but the network, the gateway and the broadcast.
    public var guestAddresses: ClosedRange<UInt32> { (network.value + 2)...(broadcast.value - 1) }

    public func contains(_ address: IPv4Address) -> Bool { address.value & mask == network.value }

    public func overlaps(_ other: IPv4Subnet) -> Bool {
        let shorter = min(prefixLength, other.prefixLength)
        let mask = shorter == 0 ? 0 : UInt32.max << (32 - UInt32(shorter))
        return network.value & mask == other.network.value & mask
    }

    public var description: String { "\(network)/\(prefixLength)" }

    public init(from decoder: any Decoder) throws {
        let text = try decoder.singleValueContainer().decode(String.self)
        do {
            self = try IPv4Subnet(parsing: text, what: "subnet")
        } catch {
            throw DecodingError.dataCorrupted(.init(codingPath: decoder.codingPath, debugDescription: error.message))
        }
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(description)
    }
}
