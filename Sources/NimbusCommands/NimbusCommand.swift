import ArgumentParser

/// The `nimbus` command: launches customised virtual machines from official cloud images.
///
/// Each noun's commands live in a folder of their own (`Commands/Instance`, `Commands/Image`, ...);
/// this type only lists them, grouped as `nimbus --help` shows them.
public struct NimbusCommand: AsyncParsableCommand {
    /// The version, the one place it is written: the Debian package takes it from `nimbus --version`.
    public static let version = "0.1.0"

    /// What `nimbus --version` prints: the version and the commit the binary was built from.
    public static var versionLine: String { "nimbus \(version) (commit \(BuildInfo.commit))" }

    public static let configuration = CommandConfiguration(
        commandName: "nimbus",
        abstract: "Launch customised virtual machines from official cloud images.",
        discussion: """
            State lives in $XDG_DATA_HOME/nimbus, images in $XDG_CACHE_HOME/nimbus/images and defaults in \
            $XDG_CONFIG_HOME/nimbus/config.yaml; NIMBUS_HOME=DIR puts all three under DIR.
            """,
        version: versionLine,
        subcommands: [],
        groupedSubcommands: [
            CommandGroup(
                name: "Instances",
                subcommands: [
                    InstanceLaunch.self, InstanceList.self, InstanceInfoCommand.self, InstanceStart.self,
                    InstanceStop.self, InstanceRestart.self, InstanceSuspend.self, InstanceResume.self,
                    InstanceDelete.self, InstanceRecover.self, InstancePurge.self, InstanceUpgrade.self,
                    InstanceRollback.self,
                ]),
            CommandGroup(
                name: "Access",
                subcommands: [
                    AccessExec.self, AccessShell.self, AccessCopy.self, AccessSSHConfig.self, AccessConsole.self,
                    AccessLogs.self,
                ]),
            CommandGroup(
                name: "Snapshots, volumes, networks and fleets",
                subcommands: [SnapshotCommand.self, VolumeCommand.self, NetworkCommand.self, FleetApply.self]),
            CommandGroup(name: "Images and seeds", subcommands: [Image.self, SeedCommand.self]),
            CommandGroup(name: "Host", subcommands: [HostDoctor.self]),
        ]
    )

    public init() {}
}
