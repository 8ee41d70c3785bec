import Dispatch
import NimbusCore
import Synchronization

/// Where the libvirt driver's work runs: one executor per daemon URI, on threads of its own, not on Swift's
/// cooperative pool.
///
/// libvirt's C calls block: a round trip to the daemon, over SSH to a remote host, or an image streamed
/// into a pool for minutes. The cooperative pool has one thread per core (two on a small host), and a
/// thread blocked in libvirt stalls every other task of the process: readiness waits, a fleet's other
/// launches, the progress display. So every entry point of the driver, its networks and its definitions
/// runs its body through `run`, which prefers this executor for the whole task tree below it; Dispatch
/// adds threads as calls block. The queue is concurrent: libvirt connections are thread-safe, and a fleet's
/// launches on one daemon must not wait behind each other's uploads.
///
/// Debug builds check it: opening a connection anywhere else fails an assertion (`LibvirtConnection.init`).
final class LibvirtExecutor: TaskExecutor {
    /// The daemon whose calls run here.
    let uri: String
    private let queue: DispatchQueue
    /// Set on the queue's threads to the URI, so a call can tell where it runs.
    private static let key = DispatchSpecificKey<String>()
    private static let executors = Mutex<[String: LibvirtExecutor]>([:])

    private init(uri: String) {
        self.uri = uri
        queue = DispatchQueue(label: "nimbus.libvirt(\(uri))", attributes: .concurrent)
        queue.setSpecific(key: Self.key, value: uri)
    }

    func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        let executor = asUnownedTaskExecutor()
        queue.async { job.runSynchronously(on: executor) }
    }

    /// The executor of `uri`, made on first use and kept for the process.
    static func shared(_ uri: String) -> LibvirtExecutor {
        executors.withLock { executors in
            if let executor = executors[uri] { return executor }
            let executor = LibvirtExecutor(uri: uri)
            executors[uri] = executor
            return executor
        }
    }

    /// Runs `body` with the executor of `uri` preferred: its synchronous libvirt calls run on that executor's
    /// threads, and so does every child task it starts.
    static func run<T>(_ uri: String, _ body: () async throws(NimbusError) -> T) async throws(NimbusError) -> T {
        try await withTaskExecutorPreference(shared(uri), operation: body)
    }

    /// `run` for work that cannot fail.
    static func answer<T>(_ uri: String, _ body: () async -> T) async -> T {
        await withTaskExecutorPreference(shared(uri), operation: body)
    }

    /// The URI of the executor the caller runs on; nil on any other thread (the cooperative pool).
    static var current: String? { DispatchQueue.getSpecific(key: key) }
}
