import NimbusCore
import Testing

@Suite("ByteSize parsing")
struct ByteSizeTests {
    @Test(
        "accepts the forms people write",
        arguments: [
            ("512M", UInt64(512) << 20), ("2G", 2 << 30), ("2GiB", 2 << 30), ("10g", 10 << 30), ("1024", 1024),
            ("4K", 4096), ("1T", 1 << 40), ("3gb", 3 << 30),
        ])
    func accepts(text: String, bytes: UInt64) throws {
        #expect(try ByteSize(parsing: text).bytes == bytes)
    }

    @Test(
        "rejects zero, negatives and malformed sizes with a message naming the value",
        arguments: [
            "-1G", "0", "1.5.2G", "", "G", "12X", "1.5G", "99999999999999999999T",
        ])
    func rejects(text: String) {
        let error = #expect(throws: NimbusError.self) { try ByteSize(parsing: text, what: "--disk") }
        #expect(error?.code == .invalidArgument)
        #expect(error?.message.contains("--disk \"\(text)\"") == true)
    }

    @Test("prints the shortest exact form and a rounded human form")
    func printing() {
        #expect(ByteSize.gibibytes(2).description == "2G")
        #expect(ByteSize(bytes: 1536 << 20).description == "1536M")
        #expect(ByteSize(bytes: 1000).description == "1000")
        #expect(ByteSize(bytes: 1536 << 20).humanReadable == "1.5 GiB")
        #expect(ByteSize.mebibytes(640).humanReadable == "640 MiB")
    }
}
