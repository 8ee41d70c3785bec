import Foundation

/// Where everything of one image goes, and the bytes of everything but the files' data.
///
/// Sectors, in order (ECMA-119 6.2, 8):
///
/// | sector | content |
/// | --- | --- |
/// | 0-15 | system area, zeros |
/// | 16 | primary volume descriptor |
/// | 17 | Joliet supplementary volume descriptor |
/// | 18 | volume descriptor set terminator |
/// | 19... | ISO 9660 path tables, L (little-endian) then M (big-endian), each one sector or more |
/// | ... | Joliet path tables, L then M |
/// | ... | SUSP continuation area: the root's `ER` entry |
/// | ... | ISO 9660 directories, with Rock Ridge entries, root first, in path table order |
/// | ... | Joliet directories, likewise |
/// | ... | file data, one extent per file, shared by both hierarchies |
///
/// With the root alone, the path tables take one sector each: 19, 20, 21, 22, the continuation area 23 and
/// the root 24, as before directories were written.
struct ISO9660Layout {
    static let sector = ISO9660Image.sectorSize
    static let primaryDescriptorSector = 16
    static let firstPathTableSector = 19
    /// ECMA-119 6.8.2.1: at most eight levels of directories, the root being the first, so a file's path has
    /// at most 8 components (genisoimage relocates deeper directories; this writer refuses them).
    static let maximumComponents = 8
    /// ECMA-119 9.4.4: a path table record names its parent by a 16-bit number.
    static let maximumDirectories = 0xFFFF

    /// The image's files sorted by path.
    let files: [ISO9660Image.File]
    /// Each file's last path component: its Rock Ridge name.
    let leafNames: [String]
    let fileSizes: [UInt64]
    let fileSectors: [Int]
    /// The directories the paths imply, the root first, each after its parent.
    let directories: [Directory]
    let iso: DirectoryHierarchy
    let joliet: DirectoryHierarchy
    let pathTableSectors: (isoL: Int, isoM: Int, jolietL: Int, jolietM: Int)
    let continuationSector: Int
    let firstFileSector: Int
    let totalSectors: Int
    let volumeIdentifier: String
    let date: ISO9660Date

    /// One directory of the tree, whatever its names in each hierarchy.
    struct Directory {
        /// The last component of its path; empty for the root.
        let name: String
        /// Its parent's index in `directories`; the root is its own parent.
        let parent: Int
        var subdirectories: [Int] = []
        var files: [Int] = []
    }

    /// A record after a directory's `.` and `..`.
    enum Entry {
        case file(Int)
        case directory(Int)
    }

    init(image: ISO9660Image) throws(ISO9660Error) {
        let identifier = image.volumeIdentifier
        guard !identifier.isEmpty, identifier.utf8.count <= 32, identifier.allSatisfy({ $0.isASCII }) else {
            throw .invalidVolumeIdentifier(identifier)
        }
        volumeIdentifier = identifier
        date = ISO9660Date(image.timestamp)

        files = image.files.sorted { Array($0.name.utf8).lexicographicallyPrecedes(Array($1.name.utf8)) }
        var seen = Set<String>()
        var sizes: [UInt64] = []
        var paths: [[String]] = []
        for file in files {
            paths.append(try Self.components(of: file.name))
            guard seen.insert(file.name).inserted else { throw .duplicateName(file.name) }
            let size = try Self.size(of: file)
            guard size <= ISO9660Image.maximumFileSize else { throw .fileTooLarge(name: file.name, size: size) }
            sizes.append(size)
        }
        fileSizes = sizes
        let leafNames = paths.map { $0[$0.count - 1] }
        self.leafNames = leafNames

        // Directories are keyed by their path's bytes, not as strings compare (canonical equivalence): `é` and
        // `e` + U+0301 are two directories, so each file is found under the bytes of its own path.
        var directories = [Directory(name: "", parent: 0)]
        var directoryIndex: [[UInt8]: Int] = [:]
        for (fileIndex, components) in paths.enumerated() {
            var parent = 0
            var path: [UInt8] = []
            for component in components.dropLast() {
                path += (path.isEmpty ? [] : [UInt8(ascii: "/")]) + Array(component.utf8)
                if let existing = directoryIndex[path] {
                    parent = existing
                    continue
                }
                directories.append(Directory(name: component, parent: parent))
                directories[parent].subdirectories.append(directories.count - 1)
                directoryIndex[path] = directories.count - 1
                parent = directories.count - 1
            }
            directories[parent].files.append(fileIndex)
        }
        if let file = files.first(where: { directoryIndex[Array($0.name.utf8)] != nil }) {
            throw .fileAndDirectory(file.name)
        }
        guard directories.count <= Self.maximumDirectories else { throw .tooManyDirectories(directories.count) }
        self.directories = directories

        // Names per directory, assigned in the order of the real names, hence deterministic.
        var isoFileNames = [[UInt8]](repeating: [], count: files.count)
        var isoDirectoryNames = [[UInt8]](repeating: [0], count: directories.count)
        for directory in directories {
            let children =
                (directory.files.map { (Entry.file($0), Array(leafNames[$0].utf8)) }
                + directory.subdirectories.map { (Entry.directory($0), Array(directories[$0].name.utf8)) })
                .sorted { $0.1.lexicographicallyPrecedes($1.1) }
            let identifiers = Self.isoIdentifiers(
                for: children.map { child in
                    switch child.0 {
                    case .file(let index): (leafNames[index], false)
                    case .directory(let index): (directories[index].name, true)
                    }
                })
            for (child, identifier) in zip(children, identifiers) {
                switch child.0 {
                case .file(let index): isoFileNames[index] = identifier
                case .directory(let index): isoDirectoryNames[index] = identifier
                }
            }
        }
        func ucs2(_ name: String) -> [UInt8] { Array(name.utf16.flatMap { [UInt8($0 >> 8), UInt8($0 & 0xFF)] }) }
        var iso = DirectoryHierarchy(
            directories: directories, fileIdentifiers: isoFileNames, directoryIdentifiers: isoDirectoryNames,
            precedes: Self.isoPrecedes,
            dotRecordSizes: { [Self.dotRecordSize(rockRidgeRoot: $0 == 0), Self.dotRecordSize(rockRidgeRoot: false)] },
            recordSize: { entry, identifier in
                switch entry {
                case .file(let index): Self.isoRecordSize(identifier: identifier, name: leafNames[index])
                case .directory(let index): Self.isoRecordSize(identifier: identifier, name: directories[index].name)
                }
            })
        var joliet = DirectoryHierarchy(
            directories: directories, fileIdentifiers: leafNames.map(ucs2),
            directoryIdentifiers: [[0]] + directories.dropFirst().map { ucs2($0.name) },
            precedes: { $0.lexicographicallyPrecedes($1) }, dotRecordSizes: { _ in [34, 34] },
            recordSize: { Self.paddedRecordSize(identifierLength: $1.count, systemUse: 0) })

        let isoTableSectors = Self.sectors(forBytes: iso.pathTableSize)
        let jolietTableSectors = Self.sectors(forBytes: joliet.pathTableSize)
        let isoM = Self.firstPathTableSector + isoTableSectors
        let jolietL = isoM + isoTableSectors
        let jolietM = jolietL + jolietTableSectors
        pathTableSectors = (Self.firstPathTableSector, isoM, jolietL, jolietM)
        continuationSector = jolietM + jolietTableSectors
        firstFileSector = joliet.place(at: iso.place(at: continuationSector + 1))
        self.iso = iso
        self.joliet = joliet

        var next = firstFileSector
        var sectors: [Int] = []
        for size in sizes {
            // An empty file takes no sector; its extent points at the next one, which the image always has.
            sectors.append(next)
            next += Int((size + UInt64(Self.sector) - 1) / UInt64(Self.sector))
        }
        fileSectors = sectors
        // One trailing zero sector, so the extent of an empty last file lies inside the volume.
        totalSectors = next + 1
    }

    // MARK: - Names

    /// The components of a file's path, each a valid name. Split on the byte `/`, not on characters: a `/`
    /// followed by a combining mark is one Character.
    static func components(of path: String) throws(ISO9660Error) -> [String] {
        if path.isEmpty { throw .invalidName(path, reason: "it is empty") }
        if path.utf8.contains(0) { throw .invalidName(path, reason: "it holds NUL") }
        let components = path.utf8.split(separator: UInt8(ascii: "/"), omittingEmptySubsequences: false)
            .map { String(decoding: $0, as: UTF8.self) }
        if components.contains(where: \.isEmpty) {
            throw .invalidName(path, reason: "it has an empty component: a leading, trailing or doubled '/'")
        }
        for component in components {
            let it = components.count == 1 ? "it" : "its component \"\(component)\""
            if component == "." || component == ".." {
                throw .invalidName(path, reason: "\(it) is reserved for directories")
            }
            if component.utf16.count > 64 {
                throw .invalidName(path, reason: "\(it) is too long: Joliet allows at most 64 UTF-16 units")
            }
            if component.utf8.count > 128 {
                throw .invalidName(
                    path, reason: "\(it) is too long: Rock Ridge names here are at most 128 UTF-8 bytes (one NM entry)")
            }
            if component.unicodeScalars.contains(where: { $0.value > 0xFFFF }) {
                throw .invalidName(
                    path,
                    reason: "\(it) holds characters outside the Basic Multilingual Plane, which Joliet (UCS-2) cannot")
            }
        }
        if components.count > maximumComponents { throw .pathTooDeep(path, components: components.count) }
        return components
    }

    static func size(of file: ISO9660Image.File) throws(ISO9660Error) -> UInt64 {
        switch file.contents {
        case .bytes(let bytes):
            return UInt64(bytes.count)
        case .file(let url):
            var info = stat()
            guard stat(url.path, &info) == 0 else {
                throw .io(path: url.path, reason: String(cString: strerror(errno)))
            }
            guard (info.st_mode & S_IFMT) == S_IFREG else { throw .io(path: url.path, reason: "not a regular file") }
            return UInt64(info.st_size)
        }
    }

    /// Level 1 identifiers (ECMA-119 7.5, 10.1) of one directory's entries, given in order as (name, is a
    /// directory): for a file up to 8 d-characters, a dot, up to 3, and `;1`; for a directory up to 8 and
    /// nothing else. Names that collide once shortened get a decimal suffix in input order, which is sorted,
    /// hence deterministic. Collisions are judged as Linux shows names without Rock Ridge, `;1` and a final dot
    /// dropped, so a directory `LATEST` and a file `LATEST.;1` are made distinct too.
    static func isoIdentifiers(for entries: [(name: String, isDirectory: Bool)]) -> [[UInt8]] {
        var used = Set<[UInt8]>()
        return entries.map { name, isDirectory in
            let mapped = Array(name.uppercased().utf8).map { byte -> UInt8 in
                switch byte {
                case UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "_"),
                    UInt8(ascii: "."):
                    return byte
                default: return UInt8(ascii: "_")
                }
            }
            var base = mapped
            var ext: [UInt8] = []
            if !isDirectory, let dot = mapped.lastIndex(of: UInt8(ascii: ".")), dot > 0 {
                base = Array(mapped[..<dot])
                ext = Array(mapped[(dot + 1)...].prefix(3))
            }
            base = base.map { $0 == UInt8(ascii: ".") ? UInt8(ascii: "_") : $0 }
            ext = ext.map { $0 == UInt8(ascii: ".") ? UInt8(ascii: "_") : $0 }
            base = Array(base.prefix(8))
            if base.isEmpty { base = [UInt8(ascii: "_")] }
            func identifier(_ base: [UInt8]) -> [UInt8] {
                isDirectory ? base : base + [UInt8(ascii: ".")] + ext + Array(";1".utf8)
            }
            func shown(_ identifier: [UInt8]) -> [UInt8] {
                guard !isDirectory else { return identifier }
                let stem = identifier.dropLast(2)
                return Array(stem.last == UInt8(ascii: ".") ? stem.dropLast() : stem)
            }
            var candidate = identifier(base)
            var counter = 1
            while used.contains(shown(candidate)) {
                let digits = Array(String(counter).utf8)
                candidate = identifier(Array(base.prefix(8 - digits.count)) + digits)
                counter += 1
            }
            used.insert(shown(candidate))
            return candidate
        }
    }

    /// ECMA-119 9.3: by name, then extension, each padded with spaces.
    static func isoPrecedes(_ a: [UInt8], _ b: [UInt8]) -> Bool {
        func parts(_ identifier: [UInt8]) -> ([UInt8], [UInt8]) {
            let stem = identifier.prefix { $0 != UInt8(ascii: ";") }
            let dot = stem.firstIndex(of: UInt8(ascii: ".")) ?? stem.endIndex
            return (Array(stem[..<dot]), Array(stem[dot...].dropFirst()))
        }
        func padded(_ x: [UInt8], _ n: Int) -> [UInt8] { x + [UInt8](repeating: 0x20, count: max(0, n - x.count)) }
        let (aName, aExt) = parts(a)
        let (bName, bExt) = parts(b)
        let nameLength = max(aName.count, bName.count)
        if padded(aName, nameLength) != padded(bName, nameLength) {
            return padded(aName, nameLength).lexicographicallyPrecedes(padded(bName, nameLength))
        }
        let extLength = max(aExt.count, bExt.count)
        return padded(aExt, extLength).lexicographicallyPrecedes(padded(bExt, extLength))
    }

    // MARK: - Sizes

    static func paddedRecordSize(identifierLength: Int, systemUse: Int) -> Int {
        let base = 33 + identifierLength + (identifierLength % 2 == 0 ? 1 : 0)
        let total = base + systemUse
        return total + total % 2
    }

    static let pxLength = 44
    static let tfLength = 5 + 3 * 7
    static let spLength = 7
    static let ceLength = 28

    static func dotRecordSize(rockRidgeRoot: Bool) -> Int {
        paddedRecordSize(
            identifierLength: 1, systemUse: (rockRidgeRoot ? spLength + ceLength : 0) + pxLength + tfLength)
    }

    /// A file's or subdirectory's record: PX, TF and NM with its Rock Ridge name.
    static func isoRecordSize(identifier: [UInt8], name: String) -> Int {
        paddedRecordSize(identifierLength: identifier.count, systemUse: pxLength + tfLength + 5 + name.utf8.count)
    }

    static func sectors(forBytes count: Int) -> Int { max(1, (count + sector - 1) / sector) }

    /// Records never straddle a sector (ECMA-119 6.8.1.1).
    static func sectorsNeeded(recordSizes: [Int]) -> Int {
        var sectors = 1
        var used = 0
        for size in recordSizes {
            if used + size > sector {
                sectors += 1
                used = 0
            }
            used += size
        }
        return sectors
    }
}

/// The directories as one hierarchy names them: ISO 9660 level 1 identifiers (with Rock Ridge), or Joliet's
/// UCS-2 names. Each has its own record order, path table numbers and extents.
struct DirectoryHierarchy {
    let fileIdentifiers: [[UInt8]]
    /// By directory; `[0]` for the root.
    let directoryIdentifiers: [[UInt8]]
    /// Each directory's records after `.` and `..`, in record order (ECMA-119 9.3).
    let entries: [[ISO9660Layout.Entry]]
    /// Directories in path table order (ECMA-119 6.9.1): by level, then parent's number, then identifier.
    let pathTableOrder: [Int]
    /// Each directory's number in the path table, from 1 for the root.
    let numbers: [Int]
    /// The bytes of one path table (ECMA-119 9.4: 8 bytes, the identifier, a pad byte after an odd one).
    let pathTableSize: Int
    /// Whole sectors of each directory's extent.
    let extentSectors: [Int]
    /// Where each directory's extent starts, set by `place(at:)`.
    private(set) var extents: [Int] = []

    init(
        directories: [ISO9660Layout.Directory], fileIdentifiers: [[UInt8]], directoryIdentifiers: [[UInt8]],
        precedes: ([UInt8], [UInt8]) -> Bool, dotRecordSizes: (Int) -> [Int],
        recordSize: (ISO9660Layout.Entry, [UInt8]) -> Int
    ) {
        self.fileIdentifiers = fileIdentifiers
        self.directoryIdentifiers = directoryIdentifiers
        func identifier(_ entry: ISO9660Layout.Entry) -> [UInt8] {
            switch entry {
            case .file(let index): fileIdentifiers[index]
            case .directory(let index): directoryIdentifiers[index]
            }
        }
        // Identifiers are unique within a directory, so the order is total.
        let entries = directories.map { directory in
            (directory.files.map(ISO9660Layout.Entry.file) + directory.subdirectories.map(ISO9660Layout.Entry.directory))
                .sorted { precedes(identifier($0), identifier($1)) }
        }
        // Level by level, each parent's subdirectories in identifier order after those of the parents before it.
        var order = [0]
        var level = [0]
        while !level.isEmpty {
            level = level.flatMap { parent in
                directories[parent].subdirectories.sorted {
                    precedes(directoryIdentifiers[$0], directoryIdentifiers[$1])
                }
            }
            order += level
        }
        self.entries = entries
        pathTableOrder = order
        var numbers = [Int](repeating: 0, count: directories.count)
        for (position, directory) in order.enumerated() { numbers[directory] = position + 1 }
        self.numbers = numbers
        pathTableSize = directoryIdentifiers.reduce(0) { $0 + 8 + $1.count + $1.count % 2 }
        extentSectors = directories.indices.map { index in
            ISO9660Layout.sectorsNeeded(
                recordSizes: dotRecordSizes(index)
                    + entries[index].map { recordSize($0, identifier($0)) })
        }
    }

    /// Places the extents from `sector` on, in path table order; returns the sector after them.
    mutating func place(at sector: Int) -> Int {
        var extents = [Int](repeating: 0, count: extentSectors.count)
        var next = sector
        for directory in pathTableOrder {
            extents[directory] = next
            next += extentSectors[directory]
        }
        self.extents = extents
        return next
    }

    /// A directory's data length: its whole extent.
    func length(of directory: Int) -> UInt64 { UInt64(extentSectors[directory] * ISO9660Layout.sector) }
}
