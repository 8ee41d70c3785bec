import ArgumentParser
import NimbusCore
import NimbusInstances
import NimbusMachines

struct VolumeCreate: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "create", abstract: "Make a data volume.")

    @OptionGroup var global: Flags.Global
    @OptionGroup var volume: VolumeNameArgument
    @Option(help: "The volume's size, like 20G.")
    var size: String

    @Option(help: "The driver of the instances it is for: qemu (a qcow2 here) or libvirt (a volume in a pool).")
    var driver: DriverKind = .qemu

    @Option(help: "The libvirt URI, with --driver libvirt (default qemu:///system).")
    var connect: String?

    @Option(help: "The libvirt storage pool, with --driver libvirt (default nimbus, made when missing).")
    var pool: String?

    func validate() throws {
        try validating { _ = try DriverChoice(kind: driver, connect: connect, pool: pool) }
    }

    func run() async throws {
        let context = try CommandContext(global: global)
        let info = try await context.manager.volumes.create(
            name: volume.name, size: try ByteSize(parsing: size, what: "--size"),
            driver: try DriverChoice(kind: driver, connect: connect, pool: pool))
        Console.result("\(info.name) \(info.size)\n")
    }
}
