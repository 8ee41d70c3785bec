import ArgumentParser
import Foundation
import NimbusCore
import NimbusImages
import NimbusInstances
import NimbusSeed

/// `nimbus image export IMAGE --target TARGET -o PATH`.
struct ImageExport: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "export", abstract: "Write a cached image for another platform.",
        discussion: """
            Targets: vmware (an OVA: OVF descriptor, streamOptimized VMDK and SHA-256 manifest, with \
            cloud-init's OVF properties to fill in at import), hyperv (a dynamic VHDX; with --cloud-init, a \
            NoCloud seed ISO beside it, <stem>-seed.iso), openstack (a qcow2 and <stem>.glance.json, the Glance \
            properties that fit, with the `openstack image create` line that uploads both), vagrant (a box for \
            vagrant-libvirt, from an image captured with --vagrant), raw and qcow2 (plain disks).
            """)

    @OptionGroup var global: Flags.Global
    @OptionGroup var output: Flags.Output

    @Argument(help: "The cached image (a reference, name or sha256 prefix, as `image list` shows).")
    var image: String

    @Option(name: .long, help: "vmware, hyperv, openstack, vagrant, raw or qcow2.")
    var target: ExportTarget

    @Option(name: [.customShort("o"), .long], help: "The file to write.", completion: .file())
    var outputFile: String

    @Option(
        name: .long,
        help: ArgumentHelp(
            "User-data: for vmware, the OVA's user-data property; for hyperv, a NoCloud seed ISO beside the disk.",
            valueName: "file"), completion: .file())
    var cloudInit: String?

    @Flag(name: .long, help: "Replace the output files if they exist.")
    var force = false

    func validate() throws {
        if cloudInit != nil, target != .vmware, target != .hyperv {
            throw ValidationError("--cloud-init goes with --target vmware or hyperv; \(target) carries no user-data")
        }
    }

    func run() async throws {
        let store = try ImageCommandSupport.store(global: global)
        let destination = URL(fileURLWithPath: (outputFile as NSString).expandingTildeInPath)
        let userData = try cloudInit.map { path throws(NimbusError) in try Self.read(path) }
        // The seed is made first: bad user-data is refused before gigabytes are converted.
        let seed = try userData.map { _ throws(NimbusError) in try Self.seed(cloudInit ?? "") }
        let seedFile = destination.deletingLastPathComponent()
            .appending(path: destination.deletingPathExtension().lastPathComponent + "-seed.iso")
        if target == .hyperv, seed != nil, FileManager.default.fileExists(atPath: seedFile.path), !force {
            throw NimbusError(
                .alreadyExists, "\(seedFile.path) exists: remove it, name another output, or pass --force to replace it"
            )
        }
        let cached = try await store.info(image)
        let display = ProgressDisplay(enabled: !global.quiet, terminal: isatty(STDERR_FILENO) == 1)
        let quiet = global.quiet
        var report = try await store.export(
            image, target: target, to: destination, userData: target == .vmware ? userData : nil, overwrite: force
        ) { progress in
            switch progress {
            case .step(let text):
                if !quiet { FileHandle.standardError.write(Data("\(text)\n".utf8)) }
            case .converting(let percent):
                let bytes = UInt64(Double(cached.virtualSize) * min(percent, 100) / 100)
                display.update(
                    TransferProgress(
                        what: "converting", bytes: bytes, total: cached.virtualSize, resumedFrom: 0,
                        finished: percent >= 100))
            }
        }
        if target == .hyperv, let seed {
            do {
                try seed.writeISO(to: seedFile, timestamp: SeedCommand.timestamp(), durable: false)
            } catch {
                for file in report.files { try? FileManager.default.removeItem(atPath: file.path) }
                throw error.nimbusError
            }
            let size = (try? FileManager.default.attributesOfItem(atPath: seedFile.path)[.size] as? UInt64) ?? 0
            report.files.append(.init(path: seedFile.path, role: "seed", size: size))
        }
        if output.format == .table {
            for file in report.files {
                print("\(file.role)\t\(ByteSize(bytes: file.size).humanReadable)\t\(file.path)")
            }
            if let command = report.command {
                print("upload with: " + command.map(SSHAccess.shellQuote).joined(separator: " "))
            }
        } else {
            print(try OutputRenderer.render(report, columns: [], rows: [], format: output.format), terminator: "")
        }
    }

    static func read(_ path: String) throws(NimbusError) -> Data {
        guard let data = FileManager.default.contents(atPath: (path as NSString).expandingTildeInPath) else {
            throw NimbusError(.notFound, "cannot read the user-data \(path): check the path")
        }
        return data
    }

    /// The NoCloud seed for a Hyper-V disk: the user-data as given, checked as `nimbus seed` checks it.
    static func seed(_ userData: String) throws(NimbusError) -> NoCloudSeed {
        var request = SeedRequest()
        request.userDataPath = userData
        let output: SeedRequest.Output
        do {
            output = try request.render()
        } catch {
            throw error.nimbusError
        }
        guard case .nocloud(let seed) = output else {
            throw NimbusError(.invalidArgument, "\(userData) did not render as a NoCloud seed")
        }
        return seed
    }
}

extension ExportTarget: ExpressibleByArgument {}
