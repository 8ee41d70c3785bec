import Foundation
import NimbusCore
import NimbusTestSupport
import Testing

@testable import NimbusMachines

@Suite("Accelerator probe")
struct AcceleratorTests {
    static let stock = HostFacts(kvmDevice: .opened(apiVersion: 12), paravirtualKVM: false)
    static let pvm = HostFacts(kvmDevice: .opened(apiVersion: 12), paravirtualKVM: true)

    @Test("auto takes KVM when /dev/kvm runs stock guests")
    func autoKVM() throws {
        let decision = try AcceleratorProbe.decide(.auto, facts: Self.stock)
        #expect(decision.accelerator == .kvm)
        #expect(decision.notice == nil)
        #expect(decision.reason.contains("usable"))
        #expect(try AcceleratorProbe.decide(.kvm, facts: Self.stock).accelerator == .kvm)
    }

    @Test("auto falls back to TCG, saying why, for each way /dev/kvm can be unusable")
    func autoFallsBack() throws {
        let cases: [(HostFacts, String)] = [
            (HostFacts(kvmDevice: .missing, paravirtualKVM: false), "/dev/kvm does not exist"),
            (
                HostFacts(kvmDevice: .notAccessible(reason: "Permission denied"), paravirtualKVM: false),
                "add your user to the kvm group"
            ),
            (HostFacts(kvmDevice: .opened(apiVersion: 11), paravirtualKVM: false), "API version 11"),
            (Self.pvm, "nested paravirtual KVM (kvm_pvm is loaded)"),
        ]
        for (facts, why) in cases {
            let decision = try AcceleratorProbe.decide(.auto, facts: facts)
            #expect(decision.accelerator == .tcg)
            #expect(decision.reason.contains(why), "\(decision.reason)")
            #expect(decision.notice?.hasPrefix("notice: using TCG software emulation") == true)
        }
    }

    @Test("--accel kvm where KVM cannot run a stock guest is an error naming the reason and the way out")
    func explicitKVMFails() {
        do {
            _ = try AcceleratorProbe.decide(.kvm, facts: Self.pvm)
            Issue.record("kvm accepted on a PVM host")
        } catch {
            #expect(error.code == .unsupported)
            #expect(error.message.contains("kvm_pvm"))
            #expect(error.message.contains("use --accel tcg or auto"))
        }
    }

    @Test("--accel tcg is TCG whatever the host")
    func explicitTCG() throws {
        #expect(try AcceleratorProbe.decide(.tcg, facts: Self.stock).accelerator == .tcg)
    }

    @Test("facts are cached per host boot and gathered again after a reboot")
    func cache() async throws {
        try await TemporaryDirectory.with { directory in
            let cache = directory.paths.hostFacts
            let bootID = try String(contentsOfFile: "/proc/sys/kernel/random/boot_id", encoding: .utf8)
                .trimmingCharacters(in: .whitespacesAndNewlines)
            let first = AcceleratorProbe.facts(cachedIn: cache) { Self.stock }
            #expect(first.bootID == bootID)
            // The cached facts are used: the gatherer is not asked again.
            let second = AcceleratorProbe.facts(cachedIn: cache) { Self.pvm }
            #expect(second.kvmDevice == Self.stock.kvmDevice)
            #expect(second.paravirtualKVM == false)
            // A cache from another boot is ignored.
            var stale = Self.stock
            stale.bootID = "another-boot"
            try JSONEncoder().encode(stale).write(to: cache.appending(path: "accelerator.json"))
            let third = AcceleratorProbe.facts(cachedIn: cache) { Self.pvm }
            #expect(third.paravirtualKVM)
        }
    }

    @Test("the real probe on this host: kvm_pvm means TCG, chosen by auto on its own")
    func realProbe() throws {
        let facts = AcceleratorProbe.gatherFacts()
        let decision = try AcceleratorProbe.decide(.auto, facts: facts)
        let pvm = FileManager.default.fileExists(atPath: "/sys/module/kvm_pvm")
        #expect(facts.paravirtualKVM == pvm)
        if pvm || !FileManager.default.fileExists(atPath: "/dev/kvm") {
            #expect(decision.accelerator == .tcg)
        }
        print("accelerator: \(decision.accelerator.rawValue) (\(decision.reason))")
    }
}
