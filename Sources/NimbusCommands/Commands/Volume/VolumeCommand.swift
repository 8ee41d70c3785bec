import ArgumentParser

/// `nimbus volume create|list|info|resize|delete`.
struct VolumeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "volume",
        abstract: "Data volumes: disks that outlive the instances they are attached to.",
        discussion: """
            A volume is a disk of its own, attached with `nimbus launch --volume NAME:PATH` (NAME:PATH:SIZE makes \
            it on the fly) to one instance at a time. The guest gives a blank volume an ext4 filesystem on its \
            first boot and mounts it at PATH at every boot; `nimbus delete --purge` never deletes a volume, \
            it gives it back for the next instance. QEMU driver only, for now.
            """,
        subcommands: [VolumeCreate.self, VolumeList.self, VolumeInfoCommand.self, VolumeResize.self, VolumeDelete.self])
}

/// The volume a command acts on.
struct VolumeNameArgument: ParsableArguments {
    @Argument(help: "The volume's name.")
    var name: String
}
