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
/// | 19, 20 | ISO 9660 path tables, L (little-endian) and M (big-endian) |
/// | 21, 22 | Joliet path tables, L and M |
/// | 23 | SUSP continuation area: the root's `ER` entry |
/// | 24... | ISO 9660 root directory, with Rock Ridge entries |
/// | ... | Joliet root directory |
/// | ... | file data, one extent per file, shared by both directories |
struct ISO9660Layout {
    static let sector = ISO9660Image.sectorSize
    static let primaryDescriptorSector = 16
    static let pathTableSectors = (isoL: 19, isoM: 20, jolietL: 21, jolietM: 22)
    static let continuationSector = 23
    static let isoRootSector = 24

    /// The image's files sorted by name.
    let files: [ISO9660Image.File]
    let fileSizes: [UInt64]
    let fileSectors: [Int]
    let isoNames: [[UInt8]]
    let jolietNames: [[UInt8]]
    /// Indices into `files`, in each directory's record order.
    let isoOrder: [Int]
    let jolietOrder: [Int]
    let isoRootSectors: Int
    let jolietRootSector: Int
    let jolietRootSectors: Int
    let firstFileSector: Int
    let totalSectors: Int
    let volumeIdentifier: String
    let date: ISO9660Date

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
        for file in files {
            try Self.validate(file.name)
            guard seen.insert(file.name).inserted else { throw .duplicateName(file.name) }
            let size = try Self.size(of: file)
            guard size <= ISO9660Image.maximumFileSize else { throw .fileTooLarge(name: file.name, size: size) }
            sizes.append(size)
        }
        fileSizes = sizes

        let sortedFiles = files
        let isoNames = Self.isoIdentifiers(for: sortedFiles.map(\.name))
        let jolietNames = sortedFiles.map { Array($0.name.utf16.flatMap { [UInt8($0 >> 8), UInt8($0 & 0xFF)] }) }
        let isoOrder = sortedFiles.indices.sorted { Self.isoPrecedes(isoNames[$0], isoNames[$1]) }
        let jolietOrder = sortedFiles.indices.sorted { jolietNames[$0].lexicographicallyPrecedes(jolietNames[$1]) }
        self.isoNames = isoNames
        self.jolietNames = jolietNames
        self.isoOrder = isoOrder
        self.jolietOrder = jolietOrder

        isoRootSectors = Self.sectorsNeeded(
            recordSizes: [Self.dotRecordSize(rockRidgeRoot: true), Self.dotRecordSize(rockRidgeRoot: false)]
                + isoOrder.map { Self.isoFileRecordSize(isoName: isoNames[$0], name: sortedFiles[$0].name) })
        jolietRootSector = Self.isoRootSector + isoRootSectors
        jolietRootSectors = Self.sectorsNeeded(
            recordSizes: [34, 34]
                + jolietOrder.map { Self.paddedRecordSize(identifierLength: jolietNames[$0].count, systemUse: 0) })
        firstFileSector = jolietRootSector + jolietRootSectors

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

    static func validate(_ name: String) throws(ISO9660Error) {
        if name.isEmpty { throw .invalidName(name, reason: "it is empty") }
        if name == "." || name == ".." { throw .invalidName(name, reason: "it is reserved for directories") }
        if name.contains("/") || name.contains("\0") {
            throw .invalidName(name, reason: "it holds '/' or NUL (this writer makes a flat root directory)")
        }
        if name.utf16.count > 64 { throw .invalidName(name, reason: "Joliet allows at most 64 UTF-16 units") }
        if name.utf8.count > 128 {
            throw .invalidName(name, reason: "Rock Ridge names here are limited to 128 UTF-8 bytes (one NM entry)")
        }
        if name.unicodeScalars.contains(where: { $0.value > 0xFFFF }) {
            throw .invalidName(
                name, reason: "Joliet (UCS-2) cannot hold characters outside the Basic Multilingual Plane")
        }
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

    /// Level 1 identifiers (ECMA-119 7.5, 10.1): up to 8 d-characters, a dot, up to 3, and `;1`. Names that
    /// collide once shortened get a decimal suffix in input order, which is sorted, hence deterministic.
    static func isoIdentifiers(for names: [String]) -> [[UInt8]] {
        var used = Set<[UInt8]>()
        return names.map { name in
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
            if let dot = mapped.lastIndex(of: UInt8(ascii: ".")), dot > 0 {
                base = Array(mapped[..<dot])
                ext = Array(mapped[(dot + 1)...].prefix(3))
            }
            base = base.map { $0 == UInt8(ascii: ".") ? UInt8(ascii: "_") : $0 }
            ext = ext.map { $0 == UInt8(ascii: ".") ? UInt8(ascii: "_") : $0 }
            base = Array(base.prefix(8))
            if base.isEmpty { base = [UInt8(ascii: "_")] }
            func identifier(_ base: [UInt8]) -> [UInt8] { base + [UInt8(ascii: ".")] + ext + Array(";1".utf8) }
            var candidate = identifier(base)
            var counter = 1
            while used.contains(candidate) {
                let digits = Array(String(counter).utf8)
                candidate = identifier(Array(base.prefix(8 - digits.count)) + digits)
                counter += 1
            }
            used.insert(candidate)
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

    static func isoFileRecordSize(isoName: [UInt8], name: String) -> Int {
        paddedRecordSize(identifierLength: isoName.count, systemUse: pxLength + tfLength + 5 + name.utf8.count)
    }

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
