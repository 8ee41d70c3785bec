import Foundation
import NimbusCore
import Testing

@Suite("IPv4 addresses and subnets")
struct IPv4SubnetTests {
    @Test("dotted quads parse and print back; anything else is nil")
    func addresses() {
        #expect(IPv4Address("192.168.100.10")?.description == "192.168.100.10")
        #expect(IPv4Address("0.0.0.0")?.value == 0)
        for bad in ["", "1.2.3", "1.2.3.4.5", "256.1.1.1", "01.2.3.4", "a.b.c.d", "1..2.3", " 1.2.3.4"] {
            #expect(IPv4Address(bad) == nil, "\(bad)")
        }
    }

    @Test("a subnet knows its gateway, guest range, netmask and broadcast")
    func subnet() throws {
        let subnet = try IPv4Subnet(parsing: "192.168.100.0/24", what: "--subnet")
        #expect(subnet.gateway.description == "192.168.100.1")
        #expect(IPv4Address(subnet.guestAddresses.lowerBound).description == "192.168.100.2")
        #expect(IPv4Address(subnet.guestAddresses.upperBound).description == "192.168.100.254")
        #expect(subnet.netmask.description == "255.255.255.0")
        #expect(subnet.broadcast.description == "192.168.100.255")
        #expect(subnet.contains(IPv4Address("192.168.100.77")!))
        #expect(!subnet.contains(IPv4Address("192.168.101.1")!))
    }

    @Test("overlap is symmetric and covers nesting")
    func overlap() throws {
        let a = try IPv4Subnet(parsing: "10.0.0.0/8", what: "")
        let b = try IPv4Subnet(parsing: "10.0.2.0/24", what: "")
        let c = try IPv4Subnet(parsing: "192.168.1.0/24", what: "")
        #expect(a.overlaps(b) && b.overlaps(a))
        #expect(!a.overlaps(c) && !c.overlaps(b))
    }

    @Test(
        "bad CIDR text is refused naming the option and the fix",
        arguments: ["192.168.100.0", "192.168.100.0/33", "192.168.100/24", "x/24", "192.168.100.0/-1"])
    func badText(text: String) {
        let error = #expect(throws: NimbusError.self) { try IPv4Subnet(parsing: text, what: "--subnet") }
        #expect(error?.code == .invalidArgument)
        #expect(error?.message.contains("--subnet \"\(text)\" is not an IPv4 subnet in CIDR notation") == true)
    }

    @Test("host bits set are refused naming the network meant")
    func hostBits() {
        let error = #expect(throws: NimbusError.self) { try IPv4Subnet(parsing: "192.168.100.7/24", what: "--subnet") }
        #expect(error?.message.contains("its network is 192.168.100.0/24") == true)
    }
}
