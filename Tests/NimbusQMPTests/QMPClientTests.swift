import Foundation
import NimbusQMP
import NimbusTestSupport
import Testing

@Suite(
    "QMP client against a real QEMU",
    .requires(.programs("qemu-system-x86_64", "qemu-img")))
struct QMPClientRealQEMUTests {
    @Test("greets, negotiates and answers query-status")
    func greetingAndStatus() async throws {
        try await BareQEMU.with { qemu in
            let client = try await QMPClient.connect(path: qemu.socket)
            #expect(
                client.greeting.version.hasPrefix("7.") || client.greeting.version.hasPrefix("8.")
                    || client.greeting.version.hasPrefix("9."))
            let status = try await client.queryStatus()
            #expect(status.running)
            #expect(status.status == "running")
            await client.close()
        }
    }

    @Test("an unknown command is CommandNotFound, a bad argument is GenericError")
    func errorClasses() async throws {
        try await BareQEMU.with { qemu in
            let client = try await QMPClient.connect(path: qemu.socket)
            await #expect(
                throws: QMPError.command(
                    command: "no-such-command", errorClass: .commandNotFound,
                    description: "The command no-such-command has not been found")
            ) {
                try await client.execute("no-such-command")
            }
            do {
                try await client.execute("query-status", arguments: ["bogus": 1])
                Issue.record("an unexpected argument was accepted")
            } catch let error as QMPError {
                guard case .command(_, let errorClass, let description) = error else {
                    Issue.record("wrong error \(error)")
                    return
                }
                #expect(errorClass == .genericError)
                #expect(description.contains("bogus"))
            }
            // The connection survives an error reply.
            #expect(try await client.queryStatus().running)
            await client.close()
        }
    }

    @Test("stop and cont report STOP and RESUME events and change query-status")
    func stopAndCont() async throws {
        try await BareQEMU.with { qemu in
            let client = try await QMPClient.connect(path: qemu.socket)
            var events = client.events().makeAsyncIterator()
            try await client.stop()
            #expect(await events.next()?.kind == .stop)
            #expect(try await client.queryStatus() == QMPStatus(running: false, status: "paused"))
            try await client.cont()
            #expect(await events.next()?.kind == .resume)
            #expect(try await client.queryStatus().running)
            try await client.systemReset()
            let reset = await events.next()
            #expect(reset?.kind == .reset)
            #expect(reset?.reason == "host-qmp-system-reset")
            await client.close()
        }
    }

    @Test("query-block lists the drive with its file and format")
    func queryBlock() async throws {
        try await BareQEMU.with { qemu in
            let client = try await QMPClient.connect(path: qemu.socket)
            let devices = try await client.queryBlock()
            let disk = try #require(devices.first { $0.device == "disk0" })
            #expect(disk.format == "qcow2")
            #expect(disk.file?.hasSuffix("disk.qcow2") == true)
            #expect(disk.readOnly == false)
            await client.close()
        }
    }

    @Test("savevm, loadvm and delvm through the human monitor; a missing snapshot is an error")
    func snapshots() async throws {
        try await BareQEMU.with { qemu in
            let client = try await QMPClient.connect(path: qemu.socket)
            try await client.saveSnapshot("first")
            #expect(try await client.humanMonitorCommand("info snapshots").contains("first"))
            try await client.loadSnapshot("first")
            try await client.deleteSnapshot("first")
            #expect(try await client.humanMonitorCommand("info snapshots").contains("first") == false)
            do {
                try await client.loadSnapshot("never-taken")
                Issue.record("loading a missing snapshot succeeded")
            } catch let error as QMPError {
                guard case .humanMonitor(let command, let output) = error else {
                    Issue.record("wrong error \(error)")
                    return
                }
                #expect(command == "loadvm never-taken")
                #expect(output.contains("never-taken"))
            }
            await #expect(throws: QMPError.self) { try await client.saveSnapshot("two words") }
            await client.close()
        }
    }

    @Test("commands sent from many tasks at once each get their own reply")
    func concurrentCommands() async throws {
        try await BareQEMU.with { qemu in
            let client = try await QMPClient.connect(path: qemu.socket)
            try await withThrowingTaskGroup(of: Bool.self) { group in
                for index in 0..<20 {
                    group.addTask {
                        if index.isMultiple(of: 2) {
                            return try await client.queryStatus().running
                        }
                        return try await client.queryBlock().contains { $0.device == "disk0" }
                    }
                }
                for try await answer in group { #expect(answer) }
            }
            await client.close()
        }
    }

    @Test("quit sends SHUTDOWN (host-qmp-quit) before its reply, then the socket closes and later commands fail")
    func quit() async throws {
        try await BareQEMU.with { qemu in
            let client = try await QMPClient.connect(path: qemu.socket)
            let events = client.events()
            try await client.quit()
            var received: [QMPEvent] = []
            for await event in events { received.append(event) }
            #expect(received.map(\.kind) == [.shutdown])
            #expect(received.first?.reason == "host-qmp-quit")
            await client.waitUntilClosed()
            await #expect(throws: QMPError.connectionClosed(partialMessage: nil)) {
                try await client.queryStatus()
            }
        }
    }

    @Test("a second client gets no greeting while the first holds the monitor, and times out")
    func busyMonitor() async throws {
        try await BareQEMU.with { qemu in
            let first = try await QMPClient.connect(path: qemu.socket)
            await #expect(throws: QMPError.timedOut(what: "the QMP greeting", after: .milliseconds(300))) {
                _ = try await QMPClient.connect(path: qemu.socket, timeout: .milliseconds(300))
            }
            await first.close()
        }
    }

    @Test(
        "clients beyond QEMU's backlog of one wait their turn instead of failing with EAGAIN (list beside a start, ConcurrencyTests)"
    )
    func queuedClients() async throws {
        try await BareQEMU.with { qemu in
            let first = try await QMPClient.connect(path: qemu.socket)
            // Three more at once: one waits in the listen backlog, the others find it full. (Each may wait for
            // all before it: a loaded CI host serves one in seconds.)
            let others = Task {
                try await withThrowingTaskGroup(of: String.self) { group in
                    for _ in 0..<3 {
                        group.addTask {
                            let client = try await QMPClient.connect(path: qemu.socket, timeout: .seconds(300))
                            let status = try await client.queryStatus()
                            await client.close()
                            return status.status
                        }
                    }
                    var statuses: [String] = []
                    for try await status in group { statuses.append(status) }
                    return statuses
                }
            }
            try await Task.sleep(for: .milliseconds(500))
            await first.close()
            #expect(try await others.value.count == 3)
        }
    }

    @Test("a socket nobody listens on is connectionFailed")
    func noSocket() async throws {
        try await TemporaryDirectory.with { directory in
            let path = directory.url.appending(path: "none.sock").path
            do {
                _ = try await QMPClient.connect(path: path)
                Issue.record("connected to nothing")
            } catch let error as QMPError {
                guard case .connectionFailed(let failedPath, _) = error else {
                    Issue.record("wrong error \(error)")
                    return
                }
                #expect(failedPath == path)
            }
        }
    }
}

@Suite("QMP client against a scripted peer")
struct QMPClientScriptedPeerTests {
    @Test("a reply split across reads, with an event between the command and its reply")
    func splitReplyAndInterleavedEvent() async throws {
        let (peer, descriptor) = try ScriptedPeer.make()
        let script = peer.run { peer in
            peer.handshake()
            let request = peer.readLine()
            let id = peer.id(of: request)
            peer.write(#"{"timestamp": {"seconds": 1700000000, "microseconds": 500000}, "event": "STOP"}"# + "\r\n")
            peer.write(#"{"return": {"status": "pau"#)
            usleep(50_000)
            peer.write(#"sed", "running": false}, "id": "\#(id)"}"# + "\r\n")
            _ = peer.readLine()
            peer.close()
        }
        let client = try await QMPClient.connect(descriptor: descriptor)
        #expect(client.greeting == QMPGreeting(version: "7.2.0", package: "scripted", capabilities: ["oob"]))
        var events = client.events().makeAsyncIterator()
        let status = try await client.queryStatus()
        #expect(status == QMPStatus(running: false, status: "paused"))
        let event = await events.next()
        #expect(event == QMPEvent(name: "STOP", data: .null, timestamp: 1_700_000_000.5))
        await client.close()
        await script.value
    }

    @Test("replies that come back out of order go to the commands that asked")
    func outOfOrderReplies() async throws {
        let (peer, descriptor) = try ScriptedPeer.make()
        let script = peer.run { peer in
            peer.handshake()
            // Each reply returns the name of the command it answers, and the two go back in the reverse of
            // the order they came in (whichever that was).
            let requests = [peer.readLine(), peer.readLine()].map { request in
                let value = try? JSONDecoder().decode(QMPValue.self, from: Data(request.utf8))
                return (id: peer.id(of: request), command: value?["execute"]?.stringValue ?? "")
            }
            for request in requests.reversed() {
                peer.write(#"{"return": "\#(request.command)", "id": "\#(request.id)"}"# + "\r\n")
            }
            _ = peer.readLine()
            peer.close()
        }
        let client = try await QMPClient.connect(descriptor: descriptor)
        async let first = client.execute("first")
        async let second = client.execute("second")
        let answers = try await (first, second)
        #expect(answers.0 == "first")
        #expect(answers.1 == "second")
        await client.close()
        await script.value
    }

    @Test("garbage on the wire fails the command in flight and closes the connection")
    func garbage() async throws {
        let (peer, descriptor) = try ScriptedPeer.make()
        let script = peer.run { peer in
            peer.handshake()
            _ = peer.readLine()
            peer.write("this is not json\r\n")
            _ = peer.readLine()
            peer.close()
        }
        let client = try await QMPClient.connect(descriptor: descriptor)
        await #expect(throws: QMPError.malformedMessage("this is not json\r")) {
            try await client.queryStatus()
        }
        await client.waitUntilClosed()
        #expect(client.isConnected == false)
        await #expect(throws: QMPError.malformedMessage("this is not json\r")) { try await client.cont() }
        await script.value
    }

    @Test("a message left half-written when the peer closes is reported with its bytes")
    func halfWrittenMessage() async throws {
        let (peer, descriptor) = try ScriptedPeer.make()
        let script = peer.run { peer in
            peer.handshake()
            _ = peer.readLine()
            peer.write(#"{"return": {"status": "runn"#)
            peer.close()
        }
        let client = try await QMPClient.connect(descriptor: descriptor)
        let events = client.events()
        await #expect(throws: QMPError.connectionClosed(partialMessage: #"{"return": {"status": "runn"#)) {
            try await client.queryStatus()
        }
        // The event stream ends with the connection.
        for await _ in events {}
        await script.value
    }

    @Test("a peer that closes before greeting, or greets with something else, fails the handshake")
    func badGreeting() async throws {
        let (silent, silentDescriptor) = try ScriptedPeer.make()
        silent.close()
        await #expect(throws: QMPError.connectionClosed(partialMessage: nil)) {
            _ = try await QMPClient.connect(descriptor: silentDescriptor)
        }
        let (peer, descriptor) = try ScriptedPeer.make()
        let script = peer.run { peer in
            peer.write(#"{"return": {}}"# + "\r\n")
            _ = peer.readLine()
            peer.close()
        }
        await #expect(throws: QMPError.unexpectedGreeting(#"object(["return": NimbusQMP.QMPValue.object([:])])"#)) {
            _ = try await QMPClient.connect(descriptor: descriptor)
        }
        await script.value
    }

    @Test("error classes QEMU may send map to QMPErrorClass, unknown ones keep their name")
    func errorClassMapping() async throws {
        let (peer, descriptor) = try ScriptedPeer.make()
        let script = peer.run { peer in
            peer.handshake()
            for errorClass in ["DeviceNotFound", "DeviceNotActive", "KVMMissingCap", "SomethingNew"] {
                let id = peer.id(of: peer.readLine())
                peer.write(#"{"error": {"class": "\#(errorClass)", "desc": "nope"}, "id": "\#(id)"}"# + "\r\n")
            }
            _ = peer.readLine()
            peer.close()
        }
        let client = try await QMPClient.connect(descriptor: descriptor)
        for expected in [QMPErrorClass.deviceNotFound, .deviceNotActive, .kvmMissingCap, .other("SomethingNew")] {
            await #expect(throws: QMPError.command(command: "eject", errorClass: expected, description: "nope")) {
                try await client.execute("eject", arguments: ["device": "cd0"])
            }
        }
        #expect(QMPErrorClass.other("SomethingNew").description == "SomethingNew")
        await client.close()
        await script.value
    }

    @Test("a peer that never ends its line is cut off at the message size limit")
    func messageTooLong() async throws {
        let (peer, descriptor) = try ScriptedPeer.make()
        let script = peer.run { peer in
            peer.handshake()
            _ = peer.readLine()
            peer.write(String(repeating: "x", count: QMPClient.maximumMessageLength + 65536))
            _ = peer.readLine()
            peer.close()
        }
        let client = try await QMPClient.connect(descriptor: descriptor)
        await #expect(throws: QMPError.messageTooLong(limit: QMPClient.maximumMessageLength)) {
            try await client.queryStatus()
        }
        await script.value
    }
}
