import ArgumentParser
import NimbusCore
import NimbusInstances
import NimbusMachines

/// `nimbus network create|list|info|start|delete`.
struct NetworkCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "network",
        abstract: "Host networks on which instances reach each other and the host by name.",
        discussion: """
            A network is a bridge on this host with a dnsmasq serving its instances' names and fixed \
            addresses; instances join with `nimbus launch --network NAME[:ADDRESS]`. Making, starting and \
            deleting a network needs root; launching onto one does not, once root has made \
            /usr/lib/qemu/qemu-bridge-helper setuid. With --driver libvirt the network is a libvirt network \
            (nimbus-NAME) on the daemon of --connect, and its instances run there.
            """,
        subcommands: [
            NetworkCreate.self, NetworkList.self, NetworkInfoCommand.self, NetworkStart.self, NetworkDelete.self,
        ])
}
