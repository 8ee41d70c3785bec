import ArgumentParser
import Testing

@testable import NimbusCommands

@Suite("nimbus launch --seed-over-http")
struct LaunchSeedOverHTTPTests {
    @Test("the flag parses, defaults to off, and the help says launch waits for the fetch even with --no-wait")
    func flag() throws {
        let launch = try #require(
            try NimbusCommand.parseAsRoot(["launch", "--seed-over-http", "--no-wait", "debian:12"]) as? InstanceLaunch)
        #expect(launch.seedOverHttp && launch.noWait)
        let plain = try #require(try NimbusCommand.parseAsRoot(["launch", "debian:12"]) as? InstanceLaunch)
        #expect(!plain.seedOverHttp)
        let help = NimbusCommand.helpMessage(for: InstanceLaunch.self, columns: 1000)
        #expect(help.contains("--seed-over-http"))
        #expect(help.contains("even with --no-wait"))
    }
}
