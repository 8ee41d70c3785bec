import Foundation

/// The descriptors, path tables and directories: everything of the image but the files' data.
extension ISO9660Layout {
    func writeMetadata(into output: inout [UInt8]) {
        var out = ByteWriter(buffer: output)
        writeVolumeDescriptor(&out, joliet: false, at: Self.primaryDescriptorSector)
        writeVolumeDescriptor(&out, joliet: true, at: Self.primaryDescriptorSector + 1)
        // Volume descriptor set terminator (ECMA-119 8.3).
        out.position = (Self.primaryDescriptorSector + 2) * Self.sector
        out.bytes([255] + Array("CD001".utf8) + [1])

        writePathTable(&out, iso, at: pathTableSectors.isoL, bigEndian: false)
        writePathTable(&out, iso, at: pathTableSectors.isoM, bigEndian: true)
        writePathTable(&out, joliet, at: pathTableSectors.jolietL, bigEndian: false)
        writePathTable(&out, joliet, at: pathTableSectors.jolietM, bigEndian: true)

        out.position = continuationSector * Self.sector
        out.bytes(Self.rripExtensionReference)

        writeDirectories(&out, iso, rockRidge: true)
        writeDirectories(&out, joliet, rockRidge: false)
        output = out.buffer
    }

    // MARK: - Volume descriptors (ECMA-119 8.4, 8.5; Joliet 1995)

    func writeVolumeDescriptor(_ out: inout ByteWriter, joliet: Bool, at sectorIndex: Int) {
        let base = sectorIndex * Self.sector
        out.position = base
        out.bytes([joliet ? 2 : 1] + Array("CD001".utf8) + [1, 0])
        func text(_ value: String, _ length: Int) {
            if joliet {
                var field = Array(value.utf16.flatMap { [UInt8($0 >> 8), UInt8($0 & 0xFF)] }.prefix(length & ~1))
                while field.count + 2 <= length { field += [0x00, 0x20] }
                if field.count < length { field.append(0) }
                out.bytes(field)
            } else {
                out.bytes(
                    Array(value.utf8.prefix(length))
                        + [UInt8](repeating: 0x20, count: max(0, length - value.utf8.count)))
            }
        }
        text("LINUX", 32)  // system identifier
        text(volumeIdentifier, 32)
        out.bytes([UInt8](repeating: 0, count: 8))
        out.both32(UInt32(totalSectors))
        // Escape sequences: `%/E` announces UCS-2 level 3 (Joliet); zeros in the primary.
        out.bytes(joliet ? [0x25, 0x2F, 0x45] + [UInt8](repeating: 0, count: 29) : [UInt8](repeating: 0, count: 32))
        out.both16(1)  // volume set size
        out.both16(1)  // volume sequence number
        out.both16(UInt16(Self.sector))
        let hierarchy = joliet ? self.joliet : iso
        out.both32(UInt32(hierarchy.pathTableSize))
        let tables =
            joliet
            ? (pathTableSectors.jolietL, pathTableSectors.jolietM)
            : (pathTableSectors.isoL, pathTableSectors.isoM)
        out.le32(UInt32(tables.0))
        out.le32(0)
        out.be32(UInt32(tables.1))
        out.be32(0)
        writeRecord(
            &out, identifier: [0], sector: hierarchy.extents[0], length: hierarchy.length(of: 0), directory: true,
            systemUse: [])
        text("", 128)  // volume set
        text("", 128)  // publisher
        text("", 128)  // data preparer
        text("NIMBUS", 128)  // application
        text("", 37)  // copyright file
        text("", 37)  // abstract file
        text("", 37)  // bibliographic file
        out.bytes(date.longForm)  // creation
        out.bytes(date.longForm)  // modification
        out.bytes(Array("0000000000000000".utf8) + [0])  // expiration: none
        out.bytes(Array("0000000000000000".utf8) + [0])  // effective: now
        out.bytes([1, 0])  // file structure version, reserved
        precondition(out.position == base + 883)
    }

    /// ECMA-119 9.4: one record per directory in path table order, contiguous over as many sectors as needed
    /// (a record may cross a sector boundary here, unlike in a directory).
    func writePathTable(
        _ out: inout ByteWriter, _ hierarchy: DirectoryHierarchy, at sectorIndex: Int, bigEndian: Bool
    ) {
        out.position = sectorIndex * Self.sector
        for index in hierarchy.pathTableOrder {
            let identifier = hierarchy.directoryIdentifiers[index]
            let extent = UInt32(hierarchy.extents[index])
            let parent = UInt16(hierarchy.numbers[directories[index].parent])
            out.bytes([UInt8(identifier.count), 0])
            if bigEndian {
                out.be32(extent)
                out.be16(parent)
            } else {
                out.le32(extent)
                out.le16(parent)
            }
            out.bytes(identifier + (identifier.count % 2 == 1 ? [0] : []))
        }
    }

    // MARK: - Directories

    /// Every directory of one hierarchy. With Rock Ridge, every record carries PX and TF, and every record but
    /// `.` and `..` an NM; the root's `.` starts with SP, then CE to the area holding ER (SUSP 5.3, 5.5, RRIP
    /// 1.12 4.3). `..` describes the parent, the root's being the root itself.
    func writeDirectories(_ out: inout ByteWriter, _ hierarchy: DirectoryHierarchy, rockRidge: Bool) {
        let tf = Self.tf(date)
        let ce = Self.ce(sector: continuationSector, offset: 0, length: Self.rripExtensionReference.count)
        func directoryPX(_ index: Int) -> [UInt8] {
            // Serial numbers: the root 1, files 2..., then the other directories.
            Self.px(
                mode: 0o040755, links: UInt32(2 + directories[index].subdirectories.count),
                serial: UInt32(index == 0 ? 1 : files.count + 1 + index))
        }
        for (index, directory) in directories.enumerated() {
            var writer = DirectoryWriter(start: hierarchy.extents[index] * Self.sector)
            writer.add(
                &out, self, identifier: [0], sector: hierarchy.extents[index], length: hierarchy.length(of: index),
                directory: true, systemUse: rockRidge ? (index == 0 ? Self.sp + ce : []) + directoryPX(index) + tf : [])
            writer.add(
                &out, self, identifier: [1], sector: hierarchy.extents[directory.parent],
                length: hierarchy.length(of: directory.parent), directory: true,
                systemUse: rockRidge ? directoryPX(directory.parent) + tf : [])
            for entry in hierarchy.entries[index] {
                switch entry {
                case .file(let file):
                    let px = Self.px(
                        mode: 0o100000 | (files[file].permissions & 0o7777), links: 1, serial: UInt32(file + 2))
                    writer.add(
                        &out, self, identifier: hierarchy.fileIdentifiers[file], sector: fileSectors[file],
                        length: fileSizes[file], directory: false,
                        systemUse: rockRidge ? px + tf + Self.nm(leafNames[file]) : [])
                case .directory(let subdirectory):
                    writer.add(
                        &out, self, identifier: hierarchy.directoryIdentifiers[subdirectory],
                        sector: hierarchy.extents[subdirectory], length: hierarchy.length(of: subdirectory),
                        directory: true,
                        systemUse: rockRidge
                            ? directoryPX(subdirectory) + tf + Self.nm(directories[subdirectory].name) : [])
                }
            }
        }
    }

    /// ECMA-119 9.1: a directory record, its identifier padded to an even offset, its System Use field
    /// padded so the record's length is even.
    func writeRecord(
        _ out: inout ByteWriter, identifier: [UInt8], sector: Int, length: UInt64, directory: Bool, systemUse: [UInt8]
    ) {
        let size = Self.paddedRecordSize(identifierLength: identifier.count, systemUse: systemUse.count)
        let start = out.position
        out.bytes([UInt8(size), 0])
        out.both32(UInt32(sector))
        out.both32(UInt32(length))
        out.bytes(date.shortForm)
        out.bytes([directory ? 0x02 : 0x00, 0, 0])
        out.both16(1)
        out.bytes([UInt8(identifier.count)] + identifier)
        if identifier.count % 2 == 0 { out.bytes([0]) }
        out.bytes(systemUse)
        out.position = start + size
    }

    // MARK: - SUSP and RRIP entries

    /// SUSP 5.3: the SP entry, check bytes BE EF, nothing skipped.
    static let sp: [UInt8] = [UInt8(ascii: "S"), UInt8(ascii: "P"), 7, 1, 0xBE, 0xEF, 0]

    /// SUSP 5.5 ER for RRIP 1.12 (IEEE P1282), with the identifier, descriptor and source it prescribes.
    static let rripExtensionReference: [UInt8] = {
        let identifier = Array("IEEE_1282".utf8)
        let descriptor = Array("THE IEEE 1282 PROTOCOL PROVIDES SUPPORT FOR POSIX FILE SYSTEM SEMANTICS.".utf8)
        let source = Array(
            "PLEASE CONTACT THE IEEE STANDARDS DEPARTMENT, PISCATAWAY, NJ, USA FOR THE 1282 SPECIFICATION.".utf8)
        let length = 8 + identifier.count + descriptor.count + source.count
        return [
            UInt8(ascii: "E"), UInt8(ascii: "R"), UInt8(length), 1,
            UInt8(identifier.count), UInt8(descriptor.count), UInt8(source.count), 1,
        ]
            + identifier + descriptor + source
    }()

    /// SUSP 5.1: continuation area at `sector`, `offset`, `length` bytes.
    static func ce(sector: Int, offset: Int, length: Int) -> [UInt8] {
        var out = ByteWriter(buffer: [])
        out.bytes([UInt8(ascii: "C"), UInt8(ascii: "E"), 28, 1])
        out.both32(UInt32(sector))
        out.both32(UInt32(offset))
        out.both32(UInt32(length))
        return out.buffer
    }

    /// RRIP 1.12 4.1.1: mode, links, uid, gid (root), and the file serial number.
    static func px(mode: UInt32, links: UInt32, serial: UInt32) -> [UInt8] {
        var out = ByteWriter(buffer: [])
        out.bytes([UInt8(ascii: "P"), UInt8(ascii: "X"), UInt8(pxLength), 1])
        out.both32(mode)
        out.both32(links)
        out.both32(0)
        out.both32(0)
        out.both32(serial)
        return out.buffer
    }

    /// RRIP 1.12 4.1.6: modification, access and attribute-change times, all the image's date.
    static func tf(_ date: ISO9660Date) -> [UInt8] {
        [UInt8(ascii: "T"), UInt8(ascii: "F"), UInt8(tfLength), 1, 0x0E] + date.shortForm + date.shortForm
            + date.shortForm
    }

    /// RRIP 1.12 4.1.4: the whole name in one NM entry.
    static func nm(_ name: String) -> [UInt8] {
        let bytes = Array(name.utf8)
        return [UInt8(ascii: "N"), UInt8(ascii: "M"), UInt8(5 + bytes.count), 1, 0] + bytes
    }
}

/// Lays out records of one directory so that none crosses a sector boundary.
struct DirectoryWriter {
    var position: Int

    init(start: Int) { position = start }

    mutating func add(
        _ out: inout ByteWriter, _ layout: ISO9660Layout, identifier: [UInt8], sector: Int, length: UInt64,
        directory: Bool, systemUse: [UInt8]
    ) {
        let size = ISO9660Layout.paddedRecordSize(identifierLength: identifier.count, systemUse: systemUse.count)
        let sectorSize = ISO9660Layout.sector
        if position % sectorSize + size > sectorSize { position += sectorSize - position % sectorSize }
        out.position = position
        layout.writeRecord(
            &out, identifier: identifier, sector: sector, length: length, directory: directory,
            systemUse: systemUse)
        position += size
    }
}

/// Little-, big- and both-endian integers (ECMA-119 7.2, 7.3) into a byte buffer.
struct ByteWriter {
    var buffer: [UInt8]
    var position = 0

    init(buffer: [UInt8]) {
        self.buffer = buffer
        position = 0
    }

    mutating func bytes(_ bytes: [UInt8]) {
        let end = position + bytes.count
        if end > buffer.count { buffer.append(contentsOf: [UInt8](repeating: 0, count: end - buffer.count)) }
        buffer.replaceSubrange(position..<end, with: bytes)
        position = end
    }

    mutating func le32(_ value: UInt32) {
        bytes([UInt8(value & 0xFF), UInt8((value >> 8) & 0xFF), UInt8((value >> 16) & 0xFF), UInt8(value >> 24)])
    }

    mutating func be32(_ value: UInt32) {
        bytes([UInt8(value >> 24), UInt8((value >> 16) & 0xFF), UInt8((value >> 8) & 0xFF), UInt8(value & 0xFF)])
    }

    mutating func both32(_ value: UInt32) {
        le32(value)
        be32(value)
    }

    mutating func le16(_ value: UInt16) { bytes([UInt8(value & 0xFF), UInt8(value >> 8)]) }

    mutating func be16(_ value: UInt16) { bytes([UInt8(value >> 8), UInt8(value & 0xFF)]) }

    mutating func both16(_ value: UInt16) {
        bytes([UInt8(value & 0xFF), UInt8(value >> 8), UInt8(value >> 8), UInt8(value & 0xFF)])
    }
}

/// The image's one date in the two forms ECMA-119 uses, always UTC.
struct ISO9660Date {
    /// 9.1.5: years since 1900, month, day, hour, minute, second, offset from GMT in 15-minute units.
    let shortForm: [UInt8]
    /// 8.4.26.1: `YYYYMMDDHHMMSScc` in digits, then the offset.
    let longForm: [UInt8]

    init(_ date: Date) {
        // Clamped to years 1-9999 (what the long form holds) first: a Date far beyond them, or NaN, has no Int64.
        let interval = date.timeIntervalSince1970.rounded(.down)
        let seconds = interval.isNaN ? 0 : Int64(min(max(interval, -62_135_596_800), 253_402_300_799))
        let days = seconds >= 0 ? seconds / 86_400 : (seconds - 86_399) / 86_400
        let secondOfDay = seconds - days * 86_400
        let (year, month, day) = Self.civil(fromDays: days)
        let clampedYear = min(max(year, 1900), 2155)
        let hour = Int(secondOfDay / 3600)
        let minute = Int(secondOfDay % 3600 / 60)
        let second = Int(secondOfDay % 60)
        shortForm = [UInt8(clampedYear - 1900), UInt8(month), UInt8(day), UInt8(hour), UInt8(minute), UInt8(second), 0]
        func padded(_ value: Int, _ width: Int) -> String {
            let text = String(value)
            return String(repeating: "0", count: max(0, width - text.count)) + text
        }
        let digits =
            padded(min(max(year, 1), 9999), 4) + padded(month, 2) + padded(day, 2) + padded(hour, 2)
            + padded(minute, 2) + padded(second, 2) + "00"
        longForm = Array(digits.utf8) + [0]
    }

    /// Howard Hinnant's days-from-civil, inverted: the proleptic Gregorian date of a day count from 1970.
    static func civil(fromDays days: Int64) -> (Int, Int, Int) {
        let z = days + 719_468
        let era = (z >= 0 ? z : z - 146_096) / 146_097
        let dayOfEra = z - era * 146_097
        let yearOfEra = (dayOfEra - dayOfEra / 1460 + dayOfEra / 36_524 - dayOfEra / 146_096) / 365
        let dayOfYear = dayOfEra - (365 * yearOfEra + yearOfEra / 4 - yearOfEra / 100)
        let mp = (5 * dayOfYear + 2) / 153
        let day = dayOfYear - (153 * mp + 2) / 5 + 1
        let month = mp < 10 ? mp + 3 : mp - 9
        let year = yearOfEra + era * 400 + (month <= 2 ? 1 : 0)
        return (Int(year), Int(month), Int(day))
    }
}
