import Foundation

/// An ISO 9660 volume with Rock Ridge and Joliet, holding files by path, the directories implied by the
/// paths: what a cloud-init NoCloud seed (`cidata`, files in the root) or an OpenStack config drive
/// (`config-2`, files under `openstack/latest/`) is made of.
///
/// The writer is deterministic: the same files, volume identifier and timestamp always give the same
/// bytes. Files are sorted by path, every date on the volume is `timestamp`, and nothing depends on the
/// host (no user ids, no inode numbers, no clock).
///
/// ```swift
/// let image = ISO9660Image(volumeIdentifier: "cidata", timestamp: date, files: [
///     .init(name: "meta-data", contents: Array("instance-id: web\n".utf8)),
/// ])
/// try image.write(to: URL(fileURLWithPath: "seed.iso"))
///
/// let drive = ISO9660Image(volumeIdentifier: "config-2", timestamp: date, files: [
///     .init(name: "openstack/latest/meta_data.json", contents: Array(#"{"uuid": "web"}"#.utf8)),
/// ])
/// ```
///
/// See README.md beside this file for the standards followed and the layout written.
public struct ISO9660Image: Sendable {
    /// One file, in the root directory or below.
    public struct File: Sendable, Hashable {
        /// Where a file's bytes come from.
        public enum Contents: Sendable, Hashable {
            /// Bytes held in memory.
            case bytes([UInt8])
            /// A file on the host, read when the image is written.
            case file(URL)
        }

        /// The file's path from the root, its components separated by `/`, e.g. `user-data` or
        /// `openstack/latest/user_data`: the names shown through Rock Ridge and Joliet. The directories are
        /// those the paths imply; at most 8 components (ECMA-119 6.8.2.1), none empty, `.` or `..`.
        public var name: String
        /// The file's bytes.
        public var contents: Contents
        /// The POSIX permission bits recorded by Rock Ridge (`0o644` by default).
        public var permissions: UInt32

        /// A file whose bytes are in memory.
        public init(name: String, contents: [UInt8], permissions: UInt32 = 0o644) {
            self.name = name
            self.contents = .bytes(contents)
            self.permissions = permissions
        }

        /// A file whose bytes are read from `url` when the image is written.
        public init(name: String, contentsOf url: URL, permissions: UInt32 = 0o644) {
            self.name = name
            self.contents = .file(url)
            self.permissions = permissions
        }
    }

    /// The largest file one directory record can describe: its data length is a 32-bit field, and this
    /// writer records every file as a single extent (ECMA-119 9.1.4).
    public static let maximumFileSize: UInt64 = 0xFFFF_FFFF

    /// The logical sector and block size (ECMA-119 6.1.2).
    public static let sectorSize = 2048

    /// The volume identifier, at most 32 characters (cloud-init looks for `cidata`, or `config-2` for a
    /// config drive).
    public var volumeIdentifier: String
    /// The date written on the volume and on every record.
    public var timestamp: Date
    /// The files, in any order (they are written sorted by path).
    public var files: [File]

    /// A volume named `volumeIdentifier` holding `files`, every date set to `timestamp`.
    public init(volumeIdentifier: String = "cidata", timestamp: Date, files: [File]) {
        self.volumeIdentifier = volumeIdentifier
        self.timestamp = timestamp
        self.files = files
    }

    /// The whole image in memory. Files given by URL are read here.
    public func bytes() throws(ISO9660Error) -> [UInt8] {
        let layout = try ISO9660Layout(image: self)
        var output = [UInt8](repeating: 0, count: layout.totalSectors * Self.sectorSize)
        layout.writeMetadata(into: &output)
        for (index, file) in layout.files.enumerated() {
            let start = layout.fileSectors[index] * Self.sectorSize
            switch file.contents {
            case .bytes(let bytes):
                output.replaceSubrange(start..<(start + bytes.count), with: bytes)
            case .file(let url):
                let data = try Self.read(url, expectedSize: layout.fileSizes[index], name: file.name)
                data.withUnsafeBytes { buffer in
                    output.replaceSubrange(start..<(start + buffer.count), with: buffer)
                }
            }
        }
        return output
    }

    /// Writes the image to `url`, replacing what is there. Files given by URL are copied in chunks, so a
    /// large file is never held in memory whole. On failure the partial output is removed.
    public func write(to url: URL) throws(ISO9660Error) {
        let layout = try ISO9660Layout(image: self)
        guard FileManager.default.createFile(atPath: url.path, contents: nil),
            let handle = try? FileHandle(forWritingTo: url)
        else {
            throw .io(path: url.path, reason: "cannot create the file")
        }
        do {
            var metadata = [UInt8](repeating: 0, count: layout.firstFileSector * Self.sectorSize)
            layout.writeMetadata(into: &metadata)
            try handle.write(contentsOf: metadata)
            for (index, file) in layout.files.enumerated() {
                try handle.seek(toOffset: UInt64(layout.fileSectors[index]) * UInt64(Self.sectorSize))
                switch file.contents {
                case .bytes(let bytes):
                    try handle.write(contentsOf: bytes)
                case .file(let source):
                    try Self.copy(source, to: handle, expectedSize: layout.fileSizes[index], name: file.name)
                }
            }
            try handle.truncate(atOffset: UInt64(layout.totalSectors) * UInt64(Self.sectorSize))
            try handle.synchronize()
            try handle.close()
        } catch {
            try? handle.close()
            try? FileManager.default.removeItem(at: url)
            if let error = error as? ISO9660Error { throw error }
            throw .io(path: url.path, reason: String(describing: error))
        }
    }

    static func read(_ url: URL, expectedSize: UInt64, name: String) throws(ISO9660Error) -> Data {
        let data: Data
        do {
            data = try Data(contentsOf: url)
        } catch {
            throw .io(path: url.path, reason: String(describing: error))
        }
        guard UInt64(data.count) == expectedSize else { throw .fileChanged(name: name, path: url.path) }
        return data
    }

    static func copy(_ source: URL, to handle: FileHandle, expectedSize: UInt64, name: String) throws {
        let input = try FileHandle(forReadingFrom: source)
        defer { try? input.close() }
        var copied: UInt64 = 0
        while let chunk = try input.read(upToCount: 1 << 20), !chunk.isEmpty {
            copied += UInt64(chunk.count)
            guard copied <= expectedSize else { throw ISO9660Error.fileChanged(name: name, path: source.path) }
            try handle.write(contentsOf: chunk)
        }
        guard copied == expectedSize else { throw ISO9660Error.fileChanged(name: name, path: source.path) }
    }
}

/// Why an image could not be made.
public enum ISO9660Error: Error, Sendable, Equatable, CustomStringConvertible {
    /// A file is larger than one extent can describe (4 GiB - 1 bytes).
    case fileTooLarge(name: String, size: UInt64)
    /// A path is empty, holds NUL, or has a component that is empty (a leading, trailing or doubled `/`), `.`
    /// or `..`, too long for Joliet (64 UTF-16 units) or Rock Ridge (128 UTF-8 bytes), or outside UCS-2.
    case invalidName(String, reason: String)
    /// Two files have the same path.
    case duplicateName(String)
    /// A path has more components than ISO 9660's eight directory levels allow (ECMA-119 6.8.2.1).
    case pathTooDeep(String, components: Int)
    /// A file's path is also the directory of other files.
    case fileAndDirectory(String)
    /// The paths imply more directories than a path table can number (65535, the root included).
    case tooManyDirectories(Int)
    /// The volume identifier is longer than 32 characters or not ASCII.
    case invalidVolumeIdentifier(String)
    /// A file given by URL changed size between planning and writing.
    case fileChanged(name: String, path: String)
    /// Reading a source or writing the image failed.
    case io(path: String, reason: String)

    public var description: String {
        switch self {
        case .fileTooLarge(let name, let size):
            return
                "\(name) is \(size) bytes, over the ISO 9660 single-extent limit of \(ISO9660Image.maximumFileSize) bytes (4 GiB - 1): "
                + "pass large files on a disk image instead"
        case .invalidName(let name, let reason):
            return "\"\(name)\" cannot be a file name on the volume: \(reason)"
        case .duplicateName(let name):
            return "two files are named \"\(name)\": give each file a distinct name"
        case .pathTooDeep(let path, let components):
            return
                "\"\(path)\" has \(components) components, over the \(ISO9660Layout.maximumComponents) ISO 9660 allows: "
                + "directories nest at most 8 levels, the root included (ECMA-119 6.8.2.1)"
        case .fileAndDirectory(let path):
            return "\"\(path)\" is a file and also the directory of other files: rename one of them"
        case .tooManyDirectories(let count):
            return
                "the paths make \(count) directories, over the \(ISO9660Layout.maximumDirectories) a path table can "
                + "number (ECMA-119 9.4.4)"
        case .invalidVolumeIdentifier(let identifier):
            return "volume identifier \"\(identifier)\" must be 1 to 32 ASCII characters"
        case .fileChanged(let name, let path):
            return "\(path) (\(name)) changed size while the image was written: write it again"
        case .io(let path, let reason):
            return "\(path): \(reason)"
        }
    }
}
