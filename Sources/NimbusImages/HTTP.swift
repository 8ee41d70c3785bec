import AsyncHTTPClient
import Foundation
import NIOCore
import NIOHTTP1
import NimbusCore

/// How hard to try before a network failure is reported: connection errors and 5xx answers are retried
/// with exponential backoff; 4xx answers never are, since asking again would get the same answer.
public struct RetryPolicy: Sendable {
    /// Tries in all, the first included.
    public var attempts: Int
    /// The wait before the second try; doubled before each further one.
    public var initialDelay: Duration

    /// Five tries, 0.5 s before the second, doubling.
    public init(attempts: Int = 5, initialDelay: Duration = .milliseconds(500)) {
        self.attempts = max(1, attempts)
        self.initialDelay = initialDelay
    }

    func delay(beforeAttempt attempt: Int) -> Duration {
        initialDelay * (1 << min(attempt - 1, 10))
    }
}

/// A failed HTTP exchange, kept precise for callers that decide on retries and fallbacks.
enum HTTPFailure: Error, Sendable, CustomStringConvertible {
    /// The server answered with a status Nimbus cannot use.
    case status(Int, URL)
    /// No answer: refused, reset, timed out, dropped.
    case connection(URL, String)

    var description: String {
        switch self {
        case .status(let code, let url): "\(url.absoluteString) answered HTTP \(code)"
        case .connection(let url, let reason): "could not reach \(url.host ?? url.absoluteString): \(reason)"
        }
    }

    var isRetryable: Bool {
        switch self {
        case .status(let code, _): code >= 500
        case .connection: true
        }
    }

    /// The NimbusError users see, naming the URL and what to check.
    func error(_ what: String) -> NimbusError {
        switch self {
        case .status(404, let url), .status(410, let url):
            NimbusError(.notFound, "\(what) is not on the mirror: \(url.absoluteString) answered HTTP 404", cause: self)
        case .status(let code, let url):
            NimbusError(.network, "could not fetch \(what): \(url.absoluteString) answered HTTP \(code)", cause: self)
        case .connection(let url, let reason):
            NimbusError(
                .network,
                "could not fetch \(what): could not reach \(url.host ?? url.absoluteString) (\(reason)); check the network "
                    + "or the mirror setting", cause: self)
        }
    }
}

/// The process's one HTTP client. It is never shut down: it lives as long as the process, like
/// `HTTPClient.shared`, but with timeouts suited to multi-gigabyte downloads (a read timeout, no
/// overall deadline) and no transparent decompression (hashes cover the bytes as published).
enum HTTP {
    static let client: HTTPClient = {
        var configuration = HTTPClient.Configuration()
        configuration.timeout = .init(connect: .seconds(15), read: .seconds(60))
        configuration.redirectConfiguration = .follow(max: 5, allowCycles: false)
        configuration.decompression = .disabled
        // Nimbus retries itself, with backoff and a message; the pool's own silent retries would make a
        // refused connection wait out the whole connect timeout.
        configuration.connectionPool.retryConnectionEstablishment = false
        return HTTPClient(eventLoopGroupProvider: .singleton, configuration: configuration)
    }()

    /// A whole small response (metadata), for statuses 200 and 304.
    struct Small: Sendable {
        var status: Int
        var headers: HTTPHeaders
        var body: Data
    }

    /// GETs `url` with `headers`, retrying per `policy`; bodies over `limit` bytes are refused.
    static func get(
        _ url: URL, headers: [(String, String)] = [], policy: RetryPolicy, limit: Int = 256 << 20
    ) async throws(HTTPFailure) -> Small {
        var attempt = 1
        while true {
            do {
                return try await getOnce(url, headers: headers, limit: limit)
            } catch {
                guard error.isRetryable, attempt < policy.attempts else { throw error }
                try? await Task.sleep(for: policy.delay(beforeAttempt: attempt))
                attempt += 1
            }
        }
    }

    private static func getOnce(_ url: URL, headers: [(String, String)], limit: Int) async throws(HTTPFailure) -> Small
    {
        var request = HTTPClientRequest(url: url.absoluteString)
        request.headers.add(name: "User-Agent", value: "nimbus")
        for (name, value) in headers { request.headers.add(name: name, value: value) }
        do {
            let response = try await client.execute(request, timeout: .minutes(10))
            let status = Int(response.status.code)
            guard status == 200 || status == 304 else {
                _ = try? await response.body.collect(upTo: 1 << 20)
                throw HTTPFailure.status(status, url)
            }
            let buffer = try await response.body.collect(upTo: limit)
            return Small(status: status, headers: response.headers, body: Data(buffer.readableBytesView))
        } catch let failure as HTTPFailure {
            throw failure
        } catch {
            throw .connection(url, describe(error))
        }
    }

    /// A short reason for a client or channel error.
    static func describe(_ error: any Error) -> String {
        let text = String(describing: error)
        if text.contains("connectionRefused") || text.contains("Connection refused") { return "connection refused" }
        if text.contains("remoteConnectionClosed") { return "the server closed the connection" }
        if text.contains("readTimeout") { return "no data for 60 seconds" }
        if text.contains("connectTimeout") { return "connection timed out" }
        return text
    }
}
