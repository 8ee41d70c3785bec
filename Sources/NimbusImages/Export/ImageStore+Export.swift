import Foundation
import NimbusCore
import NimbusDisks

/// A platform `nimbus image export` writes for, and what it takes there.
public enum ExportTarget: String, Sendable, Codable, CaseIterable, CustomStringConvertible {
    /// An OVA: OVF descriptor, streamOptimized VMDK, SHA-256 manifest (vSphere, Workstation, Fusion,
    /// VirtualBox).
    case vmware
    /// A dynamic VHDX (Hyper-V generation 1 for a BIOS image, 2 for UEFI).
    case hyperv
    /// A qcow2 and the Glance properties that fit it.
    case openstack
    /// A box for vagrant-libvirt.
    case vagrant
    /// A plain disk.
    case raw
    /// A standalone qcow2.
    case qcow2

    public var description: String { rawValue }
}

/// What an export wrote.
public struct ExportReport: Sendable, Codable, Equatable {
    /// A file written, and what it is.
    public struct File: Sendable, Codable, Equatable {
        public var path: String
        /// `ova`, `disk`, `properties`, `box`, `seed`.
        public var role: String
        public var size: UInt64

        public init(path: String, role: String, size: UInt64) {
            self.path = path
            self.role = role
            self.size = size
        }
    }

    /// The image exported, as `image list` names it.
    public var image: String
    public var target: ExportTarget
    public var files: [File]
    /// For `openstack`: the command that uploads the disk with its properties.
    public var command: [String]?
}

/// How far an export is.
public enum ExportProgress: Sendable {
    /// A step began (`converting to a streamOptimized VMDK`).
    case step(String)
    /// The disk conversion's percentage.
    case converting(Double)
}

extension ImageStore {
    /// Writes the cached image `text` names for `target` at `output`.
    ///
    /// `output` is the one file the target makes (`.ova`, `.vhdx`, `.qcow2`, `.box`, or the raw disk); the
    /// `openstack` target also writes `<stem>.glance.json` beside it. Each file is made under a hidden name
    /// beside its place and renamed there once complete, so a failure leaves nothing, and an existing file
    /// is replaced only with `overwrite`. `userData` fills the OVA's `user-data` property.
    public func export(
        _ text: String, target: ExportTarget, to output: URL, userData: Data? = nil, overwrite: Bool = false,
        progress: @escaping @Sendable (ExportProgress) -> Void = { _ in }
    ) async throws(NimbusError) -> ExportReport {
        let image = try info(text)
        let output = output.standardizedFileURL
        let folder = output.deletingLastPathComponent()
        var isFolder: ObjCBool = false
        guard FileManager.default.fileExists(atPath: folder.path, isDirectory: &isFolder), isFolder.boolValue else {
            throw NimbusError(.notFound, "\(folder.path) is not a folder: create it, or write the export elsewhere")
        }
        let companions = target == .openstack ? [Self.glanceFile(for: output)] : []
        for file in [output] + companions where FileManager.default.fileExists(atPath: file.path) && !overwrite {
            throw NimbusError(
                .alreadyExists, "\(file.path) exists: remove it, name another output, or pass --force to replace it")
        }
        if target == .vagrant, image.capture?.vagrantUser != true {
            throw NimbusError(
                .invalidArgument,
                "\(image.reference) has no vagrant user, which a Vagrant box needs to be logged in to: launch it, "
                    + "capture the instance with `nimbus image capture INSTANCE NAME --vagrant`, and export NAME")
        }

        // Everything is made in a hidden folder beside the output, then renamed into place. One left by an
        // export that was killed (its process is gone) is removed first.
        Self.removeAbandonedStaging(for: output)
        let staging = folder.appending(path: ".\(output.lastPathComponent).\(getpid()).export")
        try? FileManager.default.removeItem(at: staging)
        do {
            try FileManager.default.createDirectory(at: staging, withIntermediateDirectories: false)
        } catch {
            throw NimbusError(.io, "cannot create \(staging.path)", cause: error)
        }
        defer { try? FileManager.default.removeItem(at: staging) }

        let convert = { @Sendable (format: PortableDiskFormat, compressed: Bool, file: URL) async throws(NimbusError) in
            let what = format == .vmdk ? "a streamOptimized VMDK" : format == .vhdx ? "a dynamic VHDX" : "\(format)"
            progress(.step("converting \(image.reference) to \(what)"))
            try await DiskImage.write(image.url, as: format, compressed: compressed, to: file) {
                progress(.converting($0))
            }
        }
        var files: [(URL, String, URL)] = []
        var command: [String]?
        switch target {
        case .raw, .qcow2, .hyperv:
            let disk = staging.appending(path: output.lastPathComponent)
            let format: PortableDiskFormat = target == .raw ? .raw : target == .qcow2 ? .qcow2 : .vhdx
            try await convert(format, target == .qcow2, disk)
            files.append((disk, "disk", output))
        case .openstack:
            let disk = staging.appending(path: output.lastPathComponent)
            try await convert(.qcow2, false, disk)
            let uefi = try await !DiskImage.bootsByBIOS(image.url)
            let glance = GlanceImage(image: image, name: output.deletingPathExtension().lastPathComponent, uefi: uefi)
            let properties = staging.appending(path: Self.glanceFile(for: output).lastPathComponent)
            try Self.write(glance.json(), to: properties)
            files += [(disk, "disk", output), (properties, "properties", Self.glanceFile(for: output))]
            command = glance.command(file: output.path)
        case .vmware:
            let stem = output.deletingPathExtension().lastPathComponent
            let disk = staging.appending(path: "\(stem)-disk1.vmdk")
            try await convert(.vmdk, false, disk)
            // A ustar member holds at most 8 GiB - 1: refused before the descriptor, manifest and archive.
            let vmdkSize = try Self.size(of: disk)
            guard vmdkSize < 1 << 33 else {
                throw NimbusError(
                    .unsupported,
                    "the VMDK is \(ByteSize(bytes: vmdkSize).humanReadable), over the 8 GiB an OVA's ustar archive holds in one file: export --target raw or qcow2 and convert it with VMware's own tools, or trim the guest first (fstrim) and capture it again"
                )
            }
            progress(.step("writing the OVF descriptor and its manifest"))
            let descriptor = OVFDescriptor(
                name: stem, diskFile: disk.lastPathComponent, diskFileSize: vmdkSize,
                capacity: image.virtualSize, distribution: image.distribution,
                uefi: try await !DiskImage.bootsByBIOS(image.url),
                userData: userData?.base64EncodedString() ?? "")
            let ovf = staging.appending(path: "\(stem).ovf")
            try Self.write(Data(descriptor.render().utf8), to: ovf)
            let manifest = staging.appending(path: "\(stem).mf")
            var lines = ""
            for file in [ovf, disk] { lines += "SHA256(\(file.lastPathComponent))= \(try Self.hashFile(file))\n" }
            try Self.write(Data(lines.utf8), to: manifest)
            // OVF 1.0 (DSP0243 5.3): the descriptor first, then the manifest, then the files in the order
            // References lists them; a POSIX ustar archive.
            progress(.step("packing \(output.lastPathComponent)"))
            let ova = staging.appending(path: output.lastPathComponent)
            try await Self.tar(
                into: ova, from: staging, [ovf, manifest, disk].map(\.lastPathComponent), format: "ustar", gzip: false)
            files.append((ova, "ova", output))
        case .vagrant:
            let disk = staging.appending(path: "box.img")
            try await convert(.qcow2, true, disk)
            progress(.step("packing \(output.lastPathComponent)"))
            let gibibytes = (image.virtualSize + (1 << 30) - 1) >> 30
            let metadata = "{\"provider\": \"libvirt\", \"format\": \"qcow2\", \"virtual_size\": \(gibibytes)}\n"
            try Self.write(Data(metadata.utf8), to: staging.appending(path: "metadata.json"))
            // No synced folder by default: Vagrant would pick NFS (sudo and /etc/exports on the host) or rsync
            // (installed in the guest over the network); a project's Vagrantfile turns one on.
            let vagrantfile = """
                Vagrant.configure("2") do |config|
                  config.vm.synced_folder ".", "/vagrant", disabled: true
                end

                """
            try Self.write(Data(vagrantfile.utf8), to: staging.appending(path: "Vagrantfile"))
            let box = staging.appending(path: output.lastPathComponent)
            try await Self.tar(
                into: box, from: staging, ["metadata.json", "Vagrantfile", "box.img"], format: "posix", gzip: true)
            files.append((box, "box", output))
        }

        var written: [ExportReport.File] = []
        for (made, role, place) in files {
            guard rename(made.path, place.path) == 0 else {
                for file in written { try? FileManager.default.removeItem(atPath: file.path) }
                throw posixFailure("rename into place", place)
            }
            written.append(.init(path: place.path, role: role, size: try Self.size(of: place)))
        }
        return ExportReport(image: image.reference, target: target, files: written, command: command)
    }

    /// Removes `.<output>.<pid>.export` folders beside `output` whose process no longer runs.
    static func removeAbandonedStaging(for output: URL) {
        let folder = output.deletingLastPathComponent()
        let prefix = ".\(output.lastPathComponent)."
        for name in (try? FileManager.default.contentsOfDirectory(atPath: folder.path)) ?? []
        where name.hasPrefix(prefix) && name.hasSuffix(".export") {
            let pid = name.dropFirst(prefix.count).dropLast(".export".count)
            guard let pid = Int32(pid), pid != getpid(), kill(pid, 0) != 0, errno == ESRCH else { continue }
            try? FileManager.default.removeItem(at: folder.appending(path: name))
        }
    }

    static func glanceFile(for disk: URL) -> URL {
        disk.deletingPathExtension().appendingPathExtension("glance.json")
    }

    static func write(_ data: Data, to file: URL) throws(NimbusError) {
        do {
            try data.write(to: file)
        } catch {
            throw NimbusError(.io, "cannot write \(file.path)", cause: error)
        }
    }

    static func size(of file: URL) throws(NimbusError) -> UInt64 {
        var status = stat()
        guard stat(file.path, &status) == 0 else { throw posixFailure("stat", file) }
        return UInt64(status.st_size)
    }

    /// GNU tar writes the archive: `names` from `folder`, in that order, in `format` (`ustar`, or `posix`
    /// for members over 8 GiB), owned by root, with no other metadata of this host's.
    static func tar(into archive: URL, from folder: URL, _ names: [String], format: String, gzip: Bool)
        async throws(NimbusError)
    {
        let tar = try ProgramRunner.require("tar", package: "tar")
        let arguments =
            ["--create", "--format=\(format)", "--owner=0", "--group=0", "--numeric-owner", "--mode=u=rw,go=r"]
            + (gzip ? ["--gzip"] : []) + ["--file", archive.path, "--directory", folder.path, "--"] + names
        do {
            try await ProgramRunner.run(tar, arguments)
        } catch {
            throw DiskSpace.isFull(error) ? DiskSpace.full(archive, action: "write") : error
        }
    }
}
