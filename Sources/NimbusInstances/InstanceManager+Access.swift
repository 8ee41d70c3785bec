import Foundation
import NimbusCore
import NimbusMachines

extension InstanceManager {
    /// How to reach a running instance over SSH; an error saying how to start it otherwise.
    public func sshAccess(_ name: InstanceName) async throws -> SSHAccess {
        let state = try store.loadState(name)
        try requireUsable(name, state)
        let machine = store.directory(name).machine
        let status = await hypervisor.driver(machine).status(of: machine)
        switch status.state {
        // A live process whose monitor is slow (a loaded host) or busy (another client) may still answer
        // SSH: try it, and let SSH's own time-out speak if it does not.
        case .running, .unresponsive, .transitioning: break
        case .paused: throw NimbusError(.invalidState, "\(name) is suspended: `nimbus resume \(name)` first")
        case .stopped: throw NimbusError(.invalidState, "\(name) is stopped: `nimbus start \(name)` first")
        case .crashed:
            throw NimbusError(.invalidState, "\(name) is not running (\(status.detail ?? status.state.rawValue))")
        }
        return try sshAccess(name, state: state)
    }

    /// The SSH access recorded in `state`, without checking that the instance runs.
    func sshAccess(_ name: InstanceName, state: InstanceState) throws(NimbusError) -> SSHAccess {
        guard let port = state.sshPort else {
            throw NimbusError(
                .invalidState, "\(name) has no SSH port forwarded: it was started without user-mode networking")
        }
        return sshAccess(name, state: state, port: port)
    }

    func sshAccess(_ name: InstanceName, state: InstanceState, port: UInt16) -> SSHAccess {
        SSHAccess(
            identity: paths.keys.appending(path: "id_ed25519"), knownHosts: store.directory(name).knownHosts,
            hostAlias: InstanceBuilder.hostAlias(name), user: state.sshUser, host: state.sshHost ?? "127.0.0.1",
            port: port,
            controlDirectory: SSHAccess.controlDirectory(paths: paths))
    }

    /// A block for ~/.ssh/config that reaches the instance with plain `ssh NAME`, host key pinned.
    public func sshConfigBlock(_ name: InstanceName) throws -> String {
        let state = try store.loadState(name)
        let ssh = try sshAccess(name, state: state)
        return """
            Host \(name)
              HostName \(ssh.host)
              Port \(ssh.port)
              User \(ssh.user)
              IdentityFile \(ssh.identity.path)
              IdentitiesOnly yes
              UserKnownHostsFile \(ssh.knownHosts.path)
              HostKeyAlias \(ssh.hostAlias)
              StrictHostKeyChecking yes

            """
    }
}
