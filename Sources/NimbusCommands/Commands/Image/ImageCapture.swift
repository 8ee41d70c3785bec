import ArgumentParser
import Foundation
import NimbusCore
import NimbusImages
import NimbusInstances

/// `nimbus image capture INSTANCE NAME [--keep-instance] [--vagrant]`.
struct ImageCapture: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "capture", abstract: "Make a running instance into a local image.",
        discussion: """
            The guest is generalised as image builders do it: cloud-init clean (state, logs, seed), an empty \
            machine-id, the SSH host keys, Nimbus's user with its home and key, the logs; free blocks are trimmed. Then the instance \
            stops and its disk, the image merged in, is written into the cache as a compressed qcow2 named \
            NAME. `nimbus launch NAME` boots it as a new machine: cloud-init runs as on a first boot, with a \
            new machine-id, new host keys and the new instance's personality. The instance is deleted after \
            (its volumes are kept), unless --keep-instance, which gives it back its personality and host key \
            and starts it again (what was in Nimbus's user's home is gone from it too).
            """)

    @OptionGroup var global: Flags.Global
    @OptionGroup var output: Flags.Output

    @Argument(help: "The running instance to capture.")
    var instance: String

    @Argument(help: "The new image's name.")
    var name: String

    @Flag(help: "Keep the instance: give it back its personality and start it again.")
    var keepInstance = false

    @Flag(help: "Add the vagrant user with Vagrant's insecure keys and passwordless sudo, as Vagrant boxes need.")
    var vagrant = false

    @Option(help: "Seconds to wait for a kept instance to be ready again.")
    var timeout: Int = 900

    func run() async throws {
        let context = try CommandContext(global: global)
        let image = try await context.manager.capture(
            try InstanceName(instance), as: name, vagrant: vagrant, keepInstance: keepInstance,
            timeout: .seconds(timeout))
        print(
            try OutputRenderer.render(
                image, columns: ImageCommandSupport.listColumns, rows: [ImageCommandSupport.row(image)],
                format: output.format),
            terminator: "")
    }
}
