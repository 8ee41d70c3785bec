import Foundation

/// The files of one machine inside its instance folder (the instance folder itself belongs to
/// NimbusInstances; these names are the machine's part of it).
public struct MachineDirectory: Sendable, Hashable {
    /// The instance folder.
    public let url: URL

    public init(_ url: URL) { self.url = url.standardizedFileURL }

    /// The QMP socket's name, relative to the folder (QEMU starts in the folder, see `QEMUCommandLine`).
    public static let qmpSocketName = "qmp.sock"
    /// The serial console socket's name, relative to the folder.
    public static let consoleSocketName = "console.sock"
    /// The VNC socket's name, relative to the folder.
    public static let vncSocketName = "vnc.sock"

    /// The vhost-user socket of the virtiofsd serving share `index`, relative to the folder.
    public static func virtiofsSocketName(_ index: Int) -> String { "virtiofs\(index).sock" }

    /// The QMP control socket (mode 0600).
    public var qmpSocket: URL { url.appending(path: Self.qmpSocketName) }
    /// The serial console socket (mode 0600): connect to it to type on the guest's ttyS0.
    public var consoleSocket: URL { url.appending(path: Self.consoleSocketName) }
    /// The VNC socket, when VNC was asked for.
    public var vncSocket: URL { url.appending(path: Self.vncSocketName) }
    /// QEMU's pid, written by QEMU itself once it has daemonized.
    public var pidFile: URL { url.appending(path: "qemu.pid") }
    /// The vhost-user socket of the virtiofsd serving share `index`.
    public func virtiofsSocket(_ index: Int) -> URL { url.appending(path: Self.virtiofsSocketName(index)) }
    /// The pid of the virtiofsd serving share `index`, written by Nimbus when it starts it.
    public func virtiofsPIDFile(_ index: Int) -> URL { url.appending(path: "virtiofsd\(index).pid") }
    /// What the virtiofsd serving share `index` printed.
    public func virtiofsLog(_ index: Int) -> URL { url.appending(path: "virtiofsd\(index).log") }
    /// The serial console of the current boot.
    public var serialLog: URL { url.appending(path: "serial.log") }
    /// The serial console of the previous boot.
    public var previousSerialLog: URL { url.appending(path: "serial.log.1") }
    /// The machine's own UEFI variable store, a qcow2 copy of the OVMF template so that `savevm` can
    /// snapshot it along with the disks (a raw pflash would make every live snapshot fail).
    public var firmwareVariables: URL { url.appending(path: "efi-vars.qcow2") }
}
