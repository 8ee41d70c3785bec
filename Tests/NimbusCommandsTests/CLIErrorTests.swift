import Foundation
import NimbusCore
import NimbusInstances
import NimbusTestSupport
import Testing

/// Every user-facing error path of the instance commands, through the real binary: the message names the
/// problem and the fix, the exit status is non-zero, and nothing is left behind.
@Suite("Bad input to the instance commands")
struct CLIErrorTests {
    struct Case: Sendable, CustomStringConvertible {
        let arguments: [String]
        let status: Int32
        let message: String
        var description: String { arguments.joined(separator: " ") }
    }

    static let cases: [Case] = [
        Case(
            arguments: ["launch", "--name", "Web_1", "x"], status: 64,
            message: "instance name \"Web_1\" is not a valid hostname"),
        Case(arguments: ["launch", "--name", "../x", "x"], status: 64, message: "is not a valid hostname"),
        Case(arguments: ["launch", "--name", "a/b", "x"], status: 64, message: "is not a valid hostname"),
        Case(arguments: ["launch", "--name", ".", "x"], status: 64, message: "is not a valid hostname"),
        Case(
            arguments: ["launch", "--name", String(repeating: "a", count: 64), "x"], status: 64, message: "at most 63"),
        Case(arguments: ["launch", "--disk=-1G", "x"], status: 64, message: "--disk \"-1G\" is not a size"),
        Case(
            arguments: ["launch", "--memory", "0", "x"], status: 64, message: "--memory \"0\" must be larger than zero"),
        Case(
            arguments: ["launch", "--memory", "1.5.2G", "x"], status: 64, message: "--memory \"1.5.2G\" is not a size"),
        Case(arguments: ["launch", "--memory", "100000G", "x"], status: 64, message: "is more than this host's"),
        Case(
            arguments: ["launch", "--forward", "80", "x"], status: 64, message: "port forward \"80\" is not HOST:GUEST"),
        Case(
            arguments: ["launch", "--accel", "hvf", "x"], status: 64,
            message: "The value 'hvf' is invalid for '--accel <accel>'. Please provide one of 'auto', 'kvm' or 'tcg'"),
        Case(
            arguments: ["launch", "--firmware", "efi", "x"], status: 64,
            message:
                "The value 'efi' is invalid for '--firmware <firmware>'. Please provide one of 'auto', 'uefi' or 'bios'"
        ),
        Case(
            arguments: ["launch", "--driver", "xen", "x"], status: 64,
            message: "The value 'xen' is invalid for '--driver <driver>'. Please provide one of 'qemu' and 'libvirt'"),
        Case(
            arguments: ["network", "create", "--driver", "xen", "n1"], status: 64,
            message: "The value 'xen' is invalid for '--driver <driver>'"),
        Case(
            arguments: ["launch", "--cpu-model", "max -snapshot", "x"], status: 64,
            message: "CPU model \"max -snapshot\" is not a model name with optional features"),
        Case(
            arguments: ["launch", "--cloud-init", "/nonexistent/user-data", "x"], status: 64,
            message: "cannot read --cloud-init /nonexistent/user-data"),
        Case(
            arguments: ["launch", "--ssh-key", "/nonexistent/id.pub", "x"], status: 64,
            message: "cannot read the SSH key /nonexistent/id.pub"),
        Case(
            arguments: ["launch", "--mount", "/nonexistent:/src", "x"], status: 64,
            message: "/nonexistent is not a folder on this host"),
        Case(
            arguments: ["launch", "file:///nonexistent/image.qcow2", "--name", "web"], status: 3,
            message: "/nonexistent/image.qcow2 does not exist"),
        Case(
            arguments: ["info", "nope"], status: 3,
            message: "instance \"nope\" does not exist: `nimbus list` shows the instances"),
        Case(arguments: ["stop", "nope"], status: 3, message: "instance \"nope\" does not exist"),
        Case(
            arguments: ["recover", "nope"], status: 3,
            message: "instance \"nope\" does not exist, this store knows no libvirt daemon"),
        Case(arguments: ["recover", "../x"], status: 64, message: "is not a valid hostname"),
        Case(arguments: ["recover"], status: 3, message: "nothing to recover: this store knows no libvirt daemon"),
        Case(arguments: ["recover", "--reseed"], status: 64, message: "--reseed needs the names of the instances"),
        Case(
            arguments: ["recover", "--reseed", "--connect", "qemu:///system", "web"], status: 64,
            message: "--reseed works on this store's instances"),
        Case(arguments: ["recover", "--reseed", "nope"], status: 3, message: "instance \"nope\" does not exist"),
        Case(arguments: ["exec", "nope", "--", "true"], status: 3, message: "instance \"nope\" does not exist"),
        Case(arguments: ["exec", "web"], status: 64, message: "give the command after --"),
        Case(arguments: ["stop"], status: 64, message: "name at least one instance, or pass --all"),
        Case(arguments: ["copy", "a", "b"], status: 64, message: "name exactly one instance"),
        Case(
            arguments: ["launch", "--volume", "data", "x"], status: 64, message: "is not NAME:PATH or NAME:PATH:SIZE"),
        Case(arguments: ["launch", "--volume", "data:srv", "x"], status: 64, message: "must be an absolute path"),
        Case(arguments: ["launch", "--volume", "data:/srv:1k", "x"], status: 64, message: "too small for a volume"),
        Case(
            arguments: ["launch", "--volume", "nope:/srv", "x"], status: 3,
            message: "volume \"nope\" does not exist: `nimbus volume create nope --size 10G`"),
        Case(
            arguments: ["launch", "--volume", "a:/srv:1G", "--volume", "b:/srv:1G", "x"], status: 64,
            message: "something else is mounted there already"),
        Case(
            arguments: ["volume", "create", "Data", "--size", "1G"], status: 64,
            message: "volume name \"Data\" is not valid"),
        Case(arguments: ["volume", "create", "data", "--size", "1k"], status: 64, message: "too small for a volume"),
        Case(arguments: ["volume", "create", "data", "--size", "lots"], status: 64, message: "is not a size"),
        Case(arguments: ["volume", "info", "nope"], status: 3, message: "volume \"nope\" does not exist"),
        Case(
            arguments: ["volume", "create", "data", "--size", "1G", "--connect", "qemu:///system"], status: 64,
            message: "--connect needs --driver libvirt"),
        Case(
            arguments: ["volume", "resize", "nope", "--size", "2G"], status: 3,
            message: "volume \"nope\" does not exist"),
        Case(arguments: ["volume", "delete", "nope"], status: 3, message: "volume \"nope\" does not exist"),
        Case(arguments: ["upgrade"], status: 64, message: "name at least one instance, or pass --all"),
        Case(
            arguments: ["upgrade", "web", "--prune", "--image", "debian:13"], status: 64,
            message: "--prune takes no --image or --dry-run"),
        Case(
            arguments: ["upgrade", "--all", "--image", "debian:13"], status: 64,
            message: "--image names one release: give instance names"),
        Case(arguments: ["upgrade", "nope", "--yes"], status: 3, message: "instance \"nope\" does not exist"),
        Case(arguments: ["rollback", "nope"], status: 3, message: "instance \"nope\" does not exist"),
        Case(
            arguments: ["image", "capture", "nope", "golden"], status: 3, message: "instance \"nope\" does not exist"),
        Case(
            arguments: ["launch", "x", "--seed-format", "ignition"], status: 64,
            message: "--seed-format ignition: give --ignition FILE with a CoreOS image instead"),
        Case(
            arguments: ["launch", "x", "--seed-format", "ovf", "--seed-over-http"], status: 64,
            message: "--seed-over-http serves NoCloud files: it takes no --seed-format ovf"),
        Case(
            arguments: ["launch", "x", "--seed-format", "vmware"], status: 64,
            message: "The value 'vmware' is invalid for '--seed-format <seed-format>'"),
        Case(
            arguments: ["image", "export", "x", "--target", "xen", "-o", "/tmp/x"], status: 64,
            message: "The value 'xen' is invalid for '--target <target>'"),
    ]

    @Test("bad input is refused with the problem and the fix named", arguments: cases)
    func refused(_ test: Case) async throws {
        try await TemporaryDirectory.with { home in
            let result = try await NimbusBinary.run(test.arguments, home: home.url)
            #expect(result.status == test.status, "\(result.standardError)")
            #expect(result.standardError.contains(test.message), "\(result.standardError)")
            // Nothing was written for the refused instance.
            let instances = home.paths.instances
            let left = (try? FileManager.default.contentsOfDirectory(atPath: instances.path)) ?? []
            #expect(left.isEmpty)
            let volumes = (try? FileManager.default.contentsOfDirectory(atPath: home.paths.volumes.path)) ?? []
            #expect(volumes.filter { !$0.hasPrefix(".") }.isEmpty, "\(volumes)")
        }
    }

    /// An instance folder as a launch leaves it, without booting anything.
    func makeStoppedInstance(_ name: String, home: TemporaryDirectory) async throws {
        let store = InstanceStore(paths: home.paths)
        _ = try await store.create(InstanceSpec(name: try InstanceName(name), image: "debian:12")) { _ in
            InstanceState()
        }
    }

    @Test(
        "capture refuses a stopped instance (start it first), a bad image name and a catalog's name, and leaves it as it was"
    )
    func captureRefusals() async throws {
        try await TemporaryDirectory.with { home in
            try await makeStoppedInstance("web", home: home)
            let before = try Data(contentsOf: home.paths.instances.appending(path: "web/instance.yaml"))
            for (name, status, message) in [
                ("golden", 5, "web is stopped: `nimbus start web` first"),
                ("bad name", 64, "image name \"bad name\" is not valid"),
                ("debian:12", 64, "names a catalog image"),
            ] {
                let result = try await NimbusBinary.run(["image", "capture", "web", name], home: home.url)
                #expect(result.status == Int32(status), "\(name): \(result.standardError)")
                #expect(result.standardError.contains(message), "\(name): \(result.standardError)")
            }
            #expect(try Data(contentsOf: home.paths.instances.appending(path: "web/instance.yaml")) == before)
            let images = (try? FileManager.default.contentsOfDirectory(atPath: home.paths.images.path)) ?? []
            #expect(images.filter { $0.hasSuffix(".img") }.isEmpty, "\(images)")
        }
    }

    @Test("the vagrant user gets Vagrant's own insecure key, as Debian's vagrant package ships it")
    func vagrantKey() throws {
        let folder = "/usr/share/rubygems-integration/all/gems"
        let gems = (try? FileManager.default.contentsOfDirectory(atPath: folder)) ?? []
        guard let vagrant = gems.first(where: { $0.hasPrefix("vagrant-") && !$0.hasPrefix("vagrant-libvirt") }) else {
            let reason = "vagrant is not installed (apt-get install vagrant): its insecure key was not compared"
            if Prerequisites.required { Issue.record(Comment(rawValue: reason)) } else { print("skipped: \(reason)") }
            return
        }
        let key = try String(contentsOfFile: "\(folder)/\(vagrant)/keys/vagrant.pub", encoding: .utf8)
        #expect(InstanceManager.vagrantInsecureKeys.contains(key.trimmingCharacters(in: .whitespacesAndNewlines)))
    }

    @Test(
        "upgrade, rollback and recover --reseed refuse what they cannot do, naming why, and leave the instance as it was",
        arguments: [
            (["rollback", "web"], "qemu", 3, "web has no rollback point: `nimbus upgrade web` keeps one"),
            (["upgrade", "web", "--yes"], "coreos", 10, "web is a CoreOS (Ignition) instance, which updates itself"),
            (["upgrade", "web", "--image", "file:///nonexistent.qcow2", "--yes"], "qemu", 3, "nonexistent.qcow2"),
            (
                ["recover", "--reseed", "web"], "coreos", 10,
                "web is configured by Ignition, which runs on the first boot"
            ),
            (["recover", "--reseed", "web"], "qemu", 5, "web was launched before Nimbus kept host keys"),
        ])
    func upgradeRefusals(arguments: [String], kind: String, status: Int32, message: String) async throws {
        try await TemporaryDirectory.with { home in
            let store = InstanceStore(paths: home.paths)
            let spec = InstanceSpec(name: try InstanceName("web"), image: "debian:12")
            _ = try await store.create(spec) { dir in
                if kind == "coreos" { try Data("{}".utf8).write(to: dir.ignition) }
                return InstanceState()
            }
            let folder = home.paths.instances.appending(path: "web")
            let before = try FileManager.default.contentsOfDirectory(atPath: folder.path).sorted()
            let result = try await NimbusBinary.run(arguments, home: home.url)
            #expect(result.status == status, "\(result.standardError)")
            #expect(result.standardError.contains(message), "\(result.standardError)")
            #expect(try FileManager.default.contentsOfDirectory(atPath: folder.path).sorted() == before)
        }
    }

    @Test(
        "a damaged config.yaml: every command names it, its line and the way out; doctor reports it, goes on, and leaves it"
    )
    func damagedConfig() async throws {
        try await TemporaryDirectory.with { home in
            try await makeStoppedInstance("web", home: home)
            try FileManager.default.createDirectory(at: home.paths.config, withIntermediateDirectories: true)
            let damaged = Data("cpus: 2\nmemory: [4G\n".utf8)
            try damaged.write(to: home.paths.configFile)
            let list = try await NimbusBinary.run(["list"], home: home.url)
            #expect(list.status == 64, "\(list.standardError)")
            #expect(
                list.standardError.contains("\(home.paths.configFile.path) is not valid YAML (")
                    && list.standardError.contains("line 3")
                    && list.standardError.contains("mend it, or move it aside to use the defaults"),
                "\(list.standardError)")
            let doctor = try await NimbusBinary.run(["doctor", "--fix"], home: home.url)
            #expect(doctor.status != 0)
            #expect(doctor.standardOutput.contains("FAIL config.yaml: "), "\(doctor.standardOutput)")
            #expect(doctor.standardOutput.contains("not touched: it is yours to mend"))
            #expect(doctor.standardOutput.contains("ok   instance web: stopped"), "\(doctor.standardOutput)")
            #expect(try Data(contentsOf: home.paths.configFile) == damaged)
        }
    }

    @Test(
        "a damaged instance.yaml or state.json: commands on it name the file and the way out, list and the other instances go on"
    )
    func damagedInstanceFiles() async throws {
        try await TemporaryDirectory.with { home in
            try await makeStoppedInstance("web", home: home)
            try await makeStoppedInstance("db", home: home)
            let web = home.paths.instances.appending(path: "web")
            try Data("name: web\nimage: [debian\n".utf8).write(to: web.appending(path: "instance.yaml"))
            try Data("{\"version\": 1, \"sshPo".utf8).write(to: home.paths.instances.appending(path: "db/state.json"))
            var result = try await NimbusBinary.run(["start", "web"], home: home.url)
            #expect(result.status == 11, "\(result.standardError)")
            #expect(
                result.standardError.contains("web/instance.yaml is damaged (")
                    && result.standardError.contains("`nimbus delete --purge web`"), "\(result.standardError)")
            result = try await NimbusBinary.run(["info", "db"], home: home.url)
            #expect(result.status == 11, "\(result.standardError)")
            #expect(
                result.standardError.contains("db/state.json is damaged (")
                    && result.standardError.contains("`nimbus doctor --fix` makes it again"), "\(result.standardError)")
            result = try await NimbusBinary.run(["list"], home: home.url)
            #expect(result.status == 0, "\(result.standardError)")
            #expect(result.standardOutput.contains("web") && result.standardOutput.contains("db"))
            result = try await NimbusBinary.run(["doctor", "--fix"], home: home.url)
            #expect(
                result.standardOutput.contains("fixed instance db: state.json is damaged"), "\(result.standardOutput)")
            #expect(result.standardOutput.contains("FAIL instance web: instance.yaml is damaged"))
            result = try await NimbusBinary.run(["info", "db"], home: home.url)
            #expect(result.status == 0, "\(result.standardError)")
        }
    }

    @Test("launching an existing name fails cleanly, naming it, and leaves the instance as it was")
    func existingName() async throws {
        try await TemporaryDirectory.with { home in
            try await makeStoppedInstance("web", home: home)
            let spec = try Data(contentsOf: home.paths.instances.appending(path: "web/instance.yaml"))
            let result = try await NimbusBinary.run(["launch", "--name", "web", "debian:12"], home: home.url)
            #expect(result.status == 4)
            #expect(result.standardError.contains("an instance named \"web\" exists already"))
            #expect(try Data(contentsOf: home.paths.instances.appending(path: "web/instance.yaml")) == spec)
        }
    }

    @Test(
        "an action that does not fit the state says what to do instead",
        arguments: [
            (["resume", "web"], "web is stopped, not suspended: `nimbus start web`"),
            (["suspend", "web"], "web is stopped, not running"),
            (["exec", "web", "--", "true"], "web is stopped: `nimbus start web` first"),
            (["shell", "web"], "web is stopped: `nimbus start web` first"),
        ])
    func wrongState(arguments: [String], message: String) async throws {
        try await TemporaryDirectory.with { home in
            try await makeStoppedInstance("web", home: home)
            let result = try await NimbusBinary.run(arguments, home: home.url)
            #expect(result.status == 5)
            #expect(result.standardError.contains(message), "\(result.standardError)")
        }
    }

    @Test(
        "a disk smaller than the image is refused with the image's size named",
        .requires(.guestImage))
    func diskTooSmall() async throws {
        let image = try #require(Prerequisites.guestImage, "NIMBUS_TEST_IMAGE_DIR names no guest image")
        try await TemporaryDirectory.with { home in
            let result = try await NimbusBinary.run(
                ["launch", "file://\(image.path)", "--disk", "1G", "--name", "small"], home: home.url)
            #expect(result.status == 64)
            #expect(
                result.standardError.contains("--disk 1G is smaller than the image's virtual size"),
                "\(result.standardError)")
            #expect((try? FileManager.default.contentsOfDirectory(atPath: home.paths.instances.path)) ?? [] == [])
        }
    }

    @Test(
        "--ignition: a file that is not an Ignition 3.x config is refused naming it; a cloud-init image refuses it",
        .requires(.guestImage))
    func ignitionErrors() async throws {
        let image = try #require(Prerequisites.guestImage, "NIMBUS_TEST_IMAGE_DIR names no guest image")
        try await TemporaryDirectory.with { home in
            let cases = [
                ("not-json.ign", "{\"ignition\": ", "is not JSON"),
                ("array.ign", "[1]", "is JSON but not an object"),
                ("no-version.ign", "{\"storage\": {}}", "has no ignition.version"),
                (
                    "spec2.ign", "{\"ignition\": {\"version\": \"2.2.0\"}}",
                    "is Ignition spec 2.2.0; Nimbus takes spec 3.x"
                ),
            ]
            for (file, text, message) in cases {
                let path = home.url.appending(path: file).path
                try text.write(toFile: path, atomically: true, encoding: .utf8)
                let result = try await NimbusBinary.run(
                    ["launch", "file://\(image.path)", "--ignition", path, "--name", "ign"], home: home.url)
                #expect(result.status == 64, "\(file): \(result.standardError)")
                #expect(result.standardError.contains("\(path) \(message)"), "\(result.standardError)")
            }
            // A valid config that ignition-validate rejects (a relative path) is refused quoting it.
            if Prerequisites.programs("ignition-validate") {
                let path = home.url.appending(path: "relative.ign").path
                try #"{"ignition": {"version": "3.3.0"}, "storage": {"files": [{"path": "etc/x"}]}}"#
                    .write(toFile: path, atomically: true, encoding: .utf8)
                let result = try await NimbusBinary.run(
                    ["launch", "file://\(image.path)", "--ignition", path, "--name", "ign"], home: home.url)
                #expect(result.status == 64, "\(result.standardError)")
                #expect(result.standardError.contains("ignition-validate rejects"), "\(result.standardError)")
            }
            // A good config on an image that boots cloud-init, not Ignition.
            let good = home.url.appending(path: "good.ign").path
            try #"{"ignition": {"version": "3.3.0"}}"#.write(toFile: good, atomically: true, encoding: .utf8)
            let result = try await NimbusBinary.run(
                ["launch", "file://\(image.path)", "--ignition", good, "--name", "ign"], home: home.url)
            #expect(result.status == 64, "\(result.standardError)")
            #expect(result.standardError.contains("--ignition needs a CoreOS image"), "\(result.standardError)")
            #expect((try? FileManager.default.contentsOfDirectory(atPath: home.paths.instances.path)) ?? [] == [])
        }
    }

    @Test("several failures are all reported, one a line")
    func aggregate() async throws {
        try await TemporaryDirectory.with { home in
            let result = try await NimbusBinary.run(["stop", "one", "two"], home: home.url)
            #expect(result.status == 3)
            #expect(result.standardError.contains("one: instance \"one\" does not exist"))
            #expect(result.standardError.contains("two: instance \"two\" does not exist"))
        }
    }

    @Test("NIMBUS_QEMU naming no program: launch names the variable and the way out, writes nothing; doctor says so")
    func qemuProgramMissing() async throws {
        try await TemporaryDirectory.with { home in
            let environment = ["NIMBUS_QEMU": "/nonexistent/qemu-system-x86_64"]
            let launch = try await NimbusBinary.run(
                ["launch", "--name", "q", "/nonexistent.qcow2"], home: home.url, environment: environment)
            #expect(launch.status == NimbusError.Code.unsupported.exitStatus, "\(launch.standardError)")
            #expect(
                launch.standardError.contains(
                    "NIMBUS_QEMU names /nonexistent/qemu-system-x86_64, which is not an executable file"),
                "\(launch.standardError)")
            #expect(launch.standardError.contains("unset it to use the one on PATH"))
            #expect((try? FileManager.default.contentsOfDirectory(atPath: home.paths.instances.path)) ?? [] == [])
            let doctor = try await NimbusBinary.run(["doctor"], home: home.url, environment: environment)
            #expect(doctor.status != 0)
            #expect(doctor.standardOutput.contains("NIMBUS_QEMU"), "\(doctor.standardOutput)")
        }
    }

    @Test(
        "without libvirt on the host, --driver libvirt says what to install and writes nothing; seed still works",
        .requires(.root, .programs("unshare", "mount")))
    func libvirtMissing() async throws {
        // libvirt is loaded on first use, not linked: hide it in a private mount namespace, as on a host
        // where it was never installed, and the binary still starts.
        let library = URL(fileURLWithPath: "/usr/lib/x86_64-linux-gnu/libvirt.so.0").resolvingSymlinksInPath().path
        try await TemporaryDirectory.with { home in
            func withoutLibvirt(_ arguments: [String]) async throws -> ProgramOutput {
                let hide = "mount --bind /dev/null \(library) && exec \"$0\" \"$@\""
                return try await ProgramRunner.output(
                    "unshare", ["-m", "sh", "-c", hide, NimbusBinary.url.path] + arguments,
                    environment: ["NIMBUS_HOME": home.url.path])
            }
            let launch = try await withoutLibvirt([
                "launch", "--driver", "libvirt", "--name", "lv", "/nonexistent.qcow2",
            ])
            #expect(launch.status == 10, "\(launch.standardError)")
            #expect(launch.standardError.contains("libvirt is not installed on this host"), "\(launch.standardError)")
            #expect(launch.standardError.contains("--driver qemu"))
            #expect((try? FileManager.default.contentsOfDirectory(atPath: home.paths.instances.path)) ?? [] == [])
            let seed = home.url.appending(path: "seed.iso").path
            let made = try await withoutLibvirt(["seed", seed, "--hostname", "web"])
            #expect(made.status == 0, "\(made.standardError)")
            #expect(FileManager.default.fileExists(atPath: seed))
        }
    }
}
