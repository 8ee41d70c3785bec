import CLibvirt
import Crypto
import Foundation
import NimbusCore
import NimbusDisks
import NimbusMachines

/// A storage pool handle (`virStoragePoolPtr`), freed when released.
///
/// `@unchecked Sendable`: libvirt objects are thread-safe (see `LibvirtConnection`), the pointer never
/// changes, and the handle keeps its connection alive.
final class LibvirtPool: @unchecked Sendable {
    let pointer: virStoragePoolPtr
    let connection: LibvirtConnection
    let name: String

    init(_ pointer: virStoragePoolPtr, connection: LibvirtConnection, name: String) {
        self.pointer = pointer
        self.connection = connection
        self.name = name
    }

    deinit { _ = libvirt.virStoragePoolFree(pointer) }

    func call(_ action: String, _ function: String, _ body: (virStoragePoolPtr) -> Int32) throws(NimbusError) {
        guard body(pointer) == 0 else {
            let error = LibvirtError.last(function)
            throw NimbusError(
                .processFailed,
                "libvirt at \(connection.uri) could not \(action) storage pool \(name): \(error.message)",
                cause: error)
        }
    }

    /// Re-reads the pool's directory, so volumes made outside the API (the UEFI variable store) are seen.
    func refresh() {
        if libvirt.virStoragePoolRefresh(pointer, 0) != 0 { libvirt.virResetLastError() }
    }

    func xml() -> String {
        guard let text = libvirt.virStoragePoolGetXMLDesc(pointer, 0) else {
            libvirt.virResetLastError()
            return ""
        }
        defer { free(text) }
        return String(cString: text)
    }

    /// The pool's directory on the daemon's host.
    func targetPath() throws(NimbusError) -> String {
        let text = xml()
        guard let start = text.range(of: "<target>"), let open = text[start.upperBound...].range(of: "<path>"),
            let close = text[open.upperBound...].range(of: "</path>")
        else {
            throw NimbusError(.processFailed, "storage pool \(name) at \(connection.uri) has no target path")
        }
        return LibvirtDomainXML.unescape(String(text[open.upperBound..<close.lowerBound]))
    }

    /// Free bytes, as the daemon sees its filesystem; nil when it cannot tell.
    func available() -> UInt64? {
        var info = virStoragePoolInfo()
        guard libvirt.virStoragePoolGetInfo(pointer, &info) == 0 else {
            libvirt.virResetLastError()
            return nil
        }
        return info.available
    }

    /// Deletes temporary uploads of base volume `name` (`name.part-*`) last written over an hour ago: left by a
    /// Nimbus killed while uploading. (A live upload writes every moment; the hour allows for clock skew.)
    func deleteStaleUploads(of name: String) {
        var list: UnsafeMutablePointer<virStorageVolPtr?>?
        let count = libvirt.virStoragePoolListAllVolumes(pointer, &list, 0)
        guard count > 0, let list else {
            libvirt.virResetLastError()
            return
        }
        defer { free(list) }
        let now = Date().timeIntervalSince1970
        for index in 0..<Int(count) {
            guard let volume = list[index] else { continue }
            defer { _ = libvirt.virStorageVolFree(volume) }
            guard let cName = libvirt.virStorageVolGetName(volume), String(cString: cName).hasPrefix("\(name).part-"),
                let text = libvirt.virStorageVolGetXMLDesc(volume, 0)
            else { continue }
            let xml = String(cString: text)
            free(text)
            guard let open = xml.range(of: "<mtime>"), let close = xml[open.upperBound...].range(of: "</mtime>"),
                let mtime = Double(xml[open.upperBound..<close.lowerBound]), now - mtime > 3600
            else { continue }
            if libvirt.virStorageVolDelete(volume, 0) != 0 { libvirt.virResetLastError() }
        }
    }

    func volume(named volume: String) throws(NimbusError) -> LibvirtVolume? {
        guard let pointer = libvirt.virStorageVolLookupByName(pointer, volume) else {
            let error = LibvirtError.last("virStorageVolLookupByName")
            if error.matches(VIR_ERR_NO_STORAGE_VOL) { return nil }
            throw NimbusError(
                .network,
                "libvirt at \(connection.uri) could not look up volume \(volume) in pool \(name): \(error.message)",
                cause: error)
        }
        return LibvirtVolume(pointer, pool: self, name: volume)
    }

    /// qcow2 v3 (libvirt 9.0 makes v2, `compat=0.10`, unless told).
    static func compat(_ format: MachineConfig.DiskFormat) -> String { format == .qcow2 ? "<compat>1.1</compat>" : "" }

    static func permissions(mode: Int, owner: LibvirtDomainXML.Owner?) -> String {
        let ids = owner.map { "<owner>\($0.uid)</owner><group>\($0.gid)</group>" } ?? ""
        return "<permissions><mode>0\(String(mode, radix: 8))</mode>\(ids)</permissions>"
    }

    /// An empty volume of `size` bytes (sparse), to upload into.
    func createVolume(
        _ volume: String, size: UInt64, format: MachineConfig.DiskFormat, mode: Int, owner: LibvirtDomainXML.Owner?
    ) throws(NimbusError) -> LibvirtVolume {
        try create(
            volume,
            xml: """
                <volume>
                  <name>\(LibvirtDomainXML.escape(volume))</name>
                  <capacity unit='bytes'>\(size)</capacity>
                  <allocation unit='bytes'>0</allocation>
                  <target><format type='\(format.rawValue)'/>\(Self.permissions(mode: mode, owner: owner))</target>
                </volume>
                """)
    }

    /// A qcow2 overlay of `size` bytes on the volume at `backing`.
    func createOverlay(
        _ volume: String, size: UInt64, backing: String, format: MachineConfig.DiskFormat,
        owner: LibvirtDomainXML.Owner?
    ) throws(NimbusError) -> LibvirtVolume {
        try create(
            volume,
            xml: """
                <volume>
                  <name>\(LibvirtDomainXML.escape(volume))</name>
                  <capacity unit='bytes'>\(size)</capacity>
                  <target><format type='qcow2'/>\(Self.compat(.qcow2))\(Self.permissions(mode: 0o600, owner: owner))</target>
                  <backingStore>
                    <path>\(LibvirtDomainXML.escape(backing))</path>
                    <format type='\(format.rawValue)'/>
                  </backingStore>
                </volume>
                """)
    }

    private func create(_ volume: String, xml: String) throws(NimbusError) -> LibvirtVolume {
        guard let created = libvirt.virStorageVolCreateXML(pointer, xml, 0) else {
            throw createError(volume, LibvirtError.last("virStorageVolCreateXML"))
        }
        return LibvirtVolume(created, pool: self, name: volume)
    }

    /// A copy of `source` named `volume`, made by the daemon on its host. libvirt reads the source in the
    /// format it probes (`qemu-img convert` from qcow2 to `format`), so `capacity` is the virtual size.
    func clone(
        _ source: LibvirtVolume, as volume: String, capacity: UInt64, format: MachineConfig.DiskFormat, mode: Int,
        owner: LibvirtDomainXML.Owner?
    ) throws(NimbusError) -> LibvirtVolume {
        let xml = """
            <volume>
              <name>\(LibvirtDomainXML.escape(volume))</name>
              <capacity unit='bytes'>\(capacity)</capacity>
              <target><format type='\(format.rawValue)'/>\(Self.compat(format))\(Self.permissions(mode: mode, owner: owner))</target>
            </volume>
            """
        guard let created = libvirt.virStorageVolCreateXMLFrom(pointer, xml, source.pointer, 0) else {
            throw createError(volume, LibvirtError.last("virStorageVolCreateXMLFrom"))
        }
        return LibvirtVolume(created, pool: self, name: volume)
    }

    private func createError(_ volume: String, _ error: LibvirtError) -> NimbusError {
        NimbusError(
            .processFailed,
            "libvirt at \(connection.uri) could not create volume \(volume) in storage pool \(name): \(error.message)",
            cause: error)
    }
}
