import Foundation
import NimbusCore
import NimbusTestSupport
import Testing

@Suite("Atomic files, locks and programs")
struct FilesAndProgramsTests {
    @Test("an atomic write replaces the file whole and leaves no temporary behind")
    func atomicWrite() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let file = dir.url.appending(path: "state.json")
        try AtomicFile.write(Data("one".utf8), to: file)
        try AtomicFile.write(Data("two".utf8), to: file, permissions: 0o600)
        #expect(try String(contentsOf: file, encoding: .utf8) == "two")
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir.url.path) == ["state.json"])
    }

    @Test("an atomic write into a missing folder fails with the path named")
    func atomicWriteFails() throws {
        let error = #expect(throws: NimbusError.self) {
            try AtomicFile.write(Data(), to: URL(fileURLWithPath: "/nonexistent-nimbus/x"))
        }
        #expect(error?.code == .io)
        #expect(error?.message.contains("/nonexistent-nimbus") == true)
    }

    @Test("a held lock makes a second taker wait, then time out with the holder named")
    func lock() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let url = dir.url.appending(path: "lock")
        let held = try await FileLock.acquire(url, what: "instance web")
        #expect(try FileLock.attempt(url) == nil)
        let error = await #expect(throws: NimbusError.self) {
            _ = try await FileLock.acquire(url, timeout: .milliseconds(120), what: "instance web")
        }
        #expect(error?.code == .timeout)
        #expect(error?.message.contains("instance web is busy") == true)
        held.unlock()
        let again = try #require(try FileLock.attempt(url))
        again.unlock()
    }

    @Test("a failing program's error carries its stderr and status")
    func programFailure() async throws {
        let error = await #expect(throws: NimbusError.self) {
            try await ProgramRunner.run("ls", ["/nonexistent-nimbus-path"])
        }
        #expect(error?.code == .processFailed)
        let failure = try #require(error?.cause as? ProgramFailure)
        #expect(failure.status == 2)
        #expect(failure.standardError.contains("nonexistent-nimbus-path"))
    }

    @Test("a program's output and stdin round-trip")
    func programOutput() async throws {
        #expect(try await ProgramRunner.run("cat", [], input: "hello") == "hello")
    }

    @Test("a missing program is an unsupported error naming its package")
    func missingProgram() {
        let error = #expect(throws: NimbusError.self) { try ProgramRunner.require("no-such-tool-x", package: "x-pkg") }
        #expect(error?.code == .unsupported)
        #expect(error?.message == "no-such-tool-x is not installed: install it with `apt-get install x-pkg`")
    }
}

@Suite("Lock files removed by their holder")
struct RemovedLockTests {
    @Test("a waiter whose lock file was removed by the holder takes a fresh lock, never a stale one")
    func removedWhileWaiting() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let url = dir.url.appending(path: "web.lock")
        let holder = try await FileLock.acquire(url, what: "web")
        let waiter = Task { try await FileLock.acquire(url, timeout: .seconds(10), what: "web") }
        try await Task.sleep(for: .milliseconds(100))
        holder.removeFile()
        holder.unlock()
        let second = try await waiter.value
        // The winner holds the file the path names now, so a third taker must wait for it.
        #expect(try FileLock.attempt(url) == nil)
        #expect(FileManager.default.fileExists(atPath: url.path))
        second.unlock()
    }
}

@Suite("Whether a process lives")
struct ProcessLivenessTests {
    @Test(
        "a process whose first thread has ended but another still runs is alive (a killed QEMU's threads still hold its disk's lock); once all have ended, it is gone",
        .requires(.programs("python3")))
    func threadsOutliveTheLeader() async throws {
        // The main thread leaves with pthread_exit while a second thread sleeps 20 s: /proc/PID/stat says
        // zombie for the whole process from then on.
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/python3")
        process.arguments = [
            "-c",
            "import ctypes, threading, time; threading.Thread(target=time.sleep, args=(20,)).start(); time.sleep(0.3); ctypes.CDLL(None).pthread_exit(None)",
        ]
        try process.run()
        let pid = process.processIdentifier
        defer { kill(pid, SIGKILL) }
        var leaderEnded = false
        for _ in 0..<1500 where process.isRunning {
            let stat = (try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8)) ?? ""
            if stat.contains(") Z") {
                leaderEnded = true
                break
            }
            try await Task.sleep(for: .milliseconds(20))
        }
        try #require(leaderEnded, "the main thread did not end")
        #expect(PIDFile.isAlive(pid))
        process.waitUntilExit()
        #expect(!PIDFile.isAlive(pid))
    }
}
