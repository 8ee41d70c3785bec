// fuzz-iso9660: the ISO 9660 writer (ISO9660Image with Rock Ridge and Joliet) against real readers.
//
// The input describes an image:
//   byte 0: files (bits 0-2: 0-7 files), bit 3: a timestamp from the next 8 bytes (a Double's bit pattern, seconds
//           since 1970) instead of 2024-05-01, bit 4: a volume identifier (length byte, then that many bytes),
//           bit 5: also list the image with isoinfo -R and -J (printable ASCII names only)
//   each file: name length byte (1 + n % 80), the name's bytes (UTF-8, invalid sequences become U+FFFD; a '/'
//           makes a path, its directories implied),
//           2 bytes of permission bits (big-endian, handed over as given), 2 bytes of length (big-endian, modulo
//           6000), then as many content bytes as the input has left, completed with a pattern.
// A name or identifier the writer refuses (it throws) ends the input there; that is fine. An image it writes is:
// - the same from bytes() as from write(to:);
// - extracted by osirrox (Rock Ridge): exactly the files given, by path (byte for byte), with their sizes,
//   contents and permission bits (& 0o7777);
// - extracted by osirrox with Rock Ridge ignored (Joliet): the same names, sizes and contents;
// - listed by isoinfo -R -f and isoinfo -J -f (bit 5) with the same names.
// Any difference is a crash.

import Foundation
import FuzzDriver
import NimbusISO9660

struct Reader {
    let bytes: UnsafeBufferPointer<UInt8>
    var index = 0
    var atEnd: Bool { index >= bytes.count }
    mutating func byte() -> UInt8 {
        defer { index += 1 }
        return index < bytes.count ? bytes[index] : 0
    }
    mutating func take(_ count: Int) -> [UInt8] { (0..<count).map { _ in byte() } }
    mutating func be16() -> UInt16 { UInt16(byte()) << 8 | UInt16(byte()) }
}

let work: URL = {
    let url = FileManager.default.temporaryDirectory.appending(path: "nimbus-fuzz-iso9660-\(getpid())/")
    try? FileManager.default.removeItem(at: url)
    try? FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
    return url
}()

func fail(_ what: String, _ files: [ISO9660Image.File]) -> Never {
    let names = files.map { "\($0.name.debugDescription) (\(String($0.permissions, radix: 8)))" }
    fatalError(
        "\(what); files: \(names.joined(separator: ", ")); image kept at \(work.appending(path: "image.iso").path)")
}

/// Runs a program: its exit status, standard output and standard error. The outputs go to files, read once it
/// has exited: libFuzzer's -timeout alarm (SIGALRM) interrupts reads, and FileHandle's reading of a Pipe traps
/// on EINTR.
func run(_ arguments: [String]) -> (status: Int32, output: Data, errors: String) {
    let outputFile = work.appending(path: "stdout")
    let errorFile = work.appending(path: "stderr")
    guard FileManager.default.createFile(atPath: outputFile.path, contents: nil),
        FileManager.default.createFile(atPath: errorFile.path, contents: nil),
        let output = FileHandle(forWritingAtPath: outputFile.path),
        let errors = FileHandle(forWritingAtPath: errorFile.path)
    else { fatalError("cannot create \(outputFile.path)") }
    defer {
        try? output.close()
        try? errors.close()
    }
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    // Names are UTF-8: readers convert them to the local character set.
    process.arguments = ["LC_ALL=C.UTF-8"] + arguments
    process.standardOutput = output
    process.standardError = errors
    process.standardInput = FileHandle.nullDevice
    do {
        try process.run()
    } catch {
        fatalError("cannot run \(arguments[0]): \(error)")
    }
    process.waitUntilExit()
    let out = (try? Data(contentsOf: outputFile)) ?? Data()
    let err = (try? Data(contentsOf: errorFile)) ?? Data()
    return (process.terminationStatus, out, String(decoding: err, as: UTF8.self))
}

/// The regular files under a folder, at any depth: path relative to it (as its bytes) → (contents, permission
/// bits). Directories are implied by the paths, as the writer takes them.
func contents(of folder: URL) -> [[UInt8]: ([UInt8], UInt32)] {
    var found: [[UInt8]: ([UInt8], UInt32)] = [:]
    guard let enumerator = FileManager.default.enumerator(atPath: folder.path) else { return found }
    while let name = enumerator.nextObject() as? String {
        let path = folder.appending(path: name).path
        var info = stat()
        guard lstat(path, &info) == 0 else { fatalError("cannot stat \(path)") }
        if (info.st_mode & S_IFMT) == S_IFDIR { continue }
        let bytes = (try? Data(contentsOf: URL(fileURLWithPath: path))).map { Array($0) } ?? []
        found[Array(name.utf8)] = (
            bytes, UInt32(info.st_mode) & 0o7777 | ((info.st_mode & S_IFMT) == S_IFREG ? 0 : 0o100000)
        )
    }
    return found
}

func extract(_ image: URL, to folder: URL, joliet: Bool, _ files: [ISO9660Image.File]) -> [[UInt8]: ([UInt8], UInt32)] {
    let result = run(
        ["osirrox"] + (joliet ? ["-read_fs", "norock"] : []) + ["-indev", image.path, "-extract", "/", folder.path])
    if result.status != 0 {
        fail("osirrox\(joliet ? " (Joliet)" : "") failed (\(result.status)): \(result.errors)", files)
    }
    if result.errors.contains("WARNING") || result.errors.contains("SORRY") {
        fail("osirrox\(joliet ? " (Joliet)" : "") complained: \(result.errors)", files)
    }
    return contents(of: folder)
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    var input = Reader(bytes: UnsafeBufferPointer(start: data, count: size))
    let control = input.byte()
    var timestamp = Date(timeIntervalSince1970: 1_714_521_600)
    if control & 8 != 0 {
        let bits = input.take(8).reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
        timestamp = Date(timeIntervalSince1970: Double(bitPattern: bits))
    }
    var volume = "cidata"
    if control & 16 != 0 {
        let length = Int(input.byte() % 40)
        volume = String(decoding: input.take(length), as: UTF8.self)
    }
    var files: [ISO9660Image.File] = []
    for index in 0..<Int(control & 7) {
        let name = String(decoding: input.take(1 + Int(input.byte() % 80)), as: UTF8.self)
        let permissions = UInt32(input.be16())
        let length = Int(input.be16() % 6000)
        var bytes: [UInt8] = []
        while bytes.count < length, !input.atEnd { bytes.append(input.byte()) }
        while bytes.count < length { bytes.append(UInt8(truncatingIfNeeded: bytes.count &* 31 &+ index)) }
        files.append(ISO9660Image.File(name: name, contents: bytes, permissions: permissions))
    }

    let image = ISO9660Image(volumeIdentifier: volume, timestamp: timestamp, files: files)
    guard let bytes = try? image.bytes() else { return 0 }
    let file = work.appending(path: "image.iso")
    do {
        try image.write(to: file)
    } catch {
        fail("bytes() made an image, write(to:) threw \(error)", files)
    }
    guard let written = try? Data(contentsOf: file), Array(written) == bytes else {
        fail("write(to:) wrote other bytes than bytes() returns", files)
    }
    guard bytes.count % ISO9660Image.sectorSize == 0 else { fail("the image is not whole sectors", files) }

    let expected = Dictionary(
        uniqueKeysWithValues: files.map { file -> ([UInt8], ([UInt8], UInt32)) in
            guard case .bytes(let contents) = file.contents else { fatalError() }
            return (Array(file.name.utf8), (contents, file.permissions & 0o7777))
        })
    let rockRidge = work.appending(path: "rr")
    let joliet = work.appending(path: "joliet")
    for folder in [rockRidge, joliet] {
        _ = run(["chmod", "-R", "u+rwx", folder.path])
        try? FileManager.default.removeItem(at: folder)
    }
    let extracted = extract(file, to: rockRidge, joliet: false, files)
    if Set(extracted.keys) != Set(expected.keys) {
        let got = extracted.keys.map { String(decoding: $0, as: UTF8.self).debugDescription }.sorted()
        fail("Rock Ridge extraction gave the names \(got)", files)
    }
    for (name, (contents, permissions)) in expected {
        let (gotContents, gotPermissions) = extracted[name]!
        let shown = String(decoding: name, as: UTF8.self).debugDescription
        if gotContents != contents {
            fail("\(shown): \(gotContents.count) bytes back, \(contents.count) written", files)
        }
        if gotPermissions != permissions {
            fail(
                "\(shown): mode \(String(gotPermissions, radix: 8)) back, \(String(permissions, radix: 8)) written",
                files)
        }
    }
    let fromJoliet = extract(file, to: joliet, joliet: true, files)
    if Set(fromJoliet.keys) != Set(expected.keys) {
        let got = fromJoliet.keys.map { String(decoding: $0, as: UTF8.self).debugDescription }.sorted()
        fail("Joliet extraction gave the names \(got)", files)
    }
    for (name, (contents, _)) in expected where fromJoliet[name]!.0 != contents {
        fail("\(String(decoding: name, as: UTF8.self).debugDescription): other bytes back through Joliet", files)
    }

    let printable = files.allSatisfy { $0.name.utf8.allSatisfy { $0 >= 0x20 && $0 < 0x7F } }
    if control & 32 != 0, printable {
        // isoinfo lists each directory too.
        var names = Set<String>()
        for file in files {
            let parts = file.name.split(separator: "/")
            for depth in 1...parts.count { names.insert("/" + parts.prefix(depth).joined(separator: "/")) }
        }
        for option in ["-R", "-J"] {
            let result = run(["isoinfo", "-i", file.path, option, "-f"])
            let listed = Set(String(decoding: result.output, as: UTF8.self).split(separator: "\n").map(String.init))
            if result.status != 0 || listed != names {
                fail("isoinfo \(option) -f lists \(listed.sorted()) (status \(result.status): \(result.errors))", files)
            }
        }
    }
    return 0
}

// MARK: - Entry point

/// What SwiftPM's debug link calls for `main`: libFuzzer's driver, with this target.
@_cdecl("fuzz_iso9660_main")
public func fuzzerMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    runLibFuzzer(argc, argv, fuzz)
}
