import Crypto
import Foundation
import NimbusCore

/// Catalog metadata kept on disk with its HTTP validators (ETag, Last-Modified).
///
/// A copy younger than `maxAge` is used as is; an older one is revalidated with a conditional GET
/// (`If-None-Match` / `If-Modified-Since`, 304 keeps it); `refresh` always revalidates. When the
/// mirror cannot be reached (or answers 5xx), a cached copy is used with a warning; without one the
/// failure is reported. `offline` asks nothing of the network: a cached copy of any age, else `notFound`.
struct MetadataCache: Sendable {
    struct Validators: Codable {
        var url: String
        var etag: String?
        var lastModified: String?
        var fetchedAt: Date
    }

    let folder: URL
    let maxAge: TimeInterval
    let refresh: Bool
    let policy: RetryPolicy
    let warn: @Sendable (String) -> Void
    var offline = false

    /// The body of `url`, passed through `transform` (signature check) when fetched afresh; what is cached
    /// is the transformed body, so a cache hit needs no second check.
    func fetch(
        _ url: URL, what: String, transform: @Sendable (Data) async throws(NimbusError) -> Data = { $0 }
    ) async throws(NimbusError) -> Data {
        if url.isFileURL {
            do {
                return try await transform(Data(contentsOf: url))
            } catch let error as NimbusError {
                throw error
            } catch {
                throw NimbusError(
                    .notFound, "\(what) is not on the mirror: \(url.path) cannot be read", cause: ErrorText(error))
            }
        }
        let key = SHA256.hash(data: Data(url.absoluteString.utf8)).prefix(16).map { String(format: "%02x", $0) }
            .joined()
        let bodyFile = folder.appending(path: "\(key).body")
        let validatorFile = folder.appending(path: "\(key).json")
        let cached: (Validators, Data)? = {
            guard let meta = try? Data(contentsOf: validatorFile),
                let validators = try? JSONDecoder.iso.decode(Validators.self, from: meta),
                validators.url == url.absoluteString,
                let body = try? Data(contentsOf: bodyFile)
            else { return nil }
            return (validators, body)
        }()
        if let (validators, body) = cached, !refresh, Date().timeIntervalSince(validators.fetchedAt) < maxAge {
            return body
        }
        if offline {
            guard let (_, body) = cached else {
                throw NimbusError(.notFound, "the \(what) is not cached: `nimbus image refresh` fetches it")
            }
            return body
        }
        var headers: [(String, String)] = []
        if let (validators, _) = cached {
            if let etag = validators.etag { headers.append(("If-None-Match", etag)) }
            if let modified = validators.lastModified { headers.append(("If-Modified-Since", modified)) }
        }
        let response: HTTP.Small
        do {
            response = try await HTTP.get(url, headers: headers, policy: policy)
        } catch {
            if error.isRetryable, let (validators, body) = cached {
                let age = Int(Date().timeIntervalSince(validators.fetchedAt) / 60)
                warn("warning: \(error); using the \(what) cached \(age) minutes ago")
                return body
            }
            throw error.error("the \(what)")
        }
        if response.status == 304, let (validators, body) = cached {
            var renewed = validators
            renewed.fetchedAt = Date()
            try? store(renewed, body: nil, validatorFile: validatorFile, bodyFile: bodyFile)
            return body
        }
        let body = try await transform(response.body)
        let validators = Validators(
            url: url.absoluteString, etag: response.headers.first(name: "ETag"),
            lastModified: response.headers.first(name: "Last-Modified"), fetchedAt: Date())
        try store(validators, body: body, validatorFile: validatorFile, bodyFile: bodyFile)
        return body
    }

    private func store(_ validators: Validators, body: Data?, validatorFile: URL, bodyFile: URL) throws(NimbusError) {
        do {
            try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        } catch {
            throw NimbusError(.io, "could not create \(folder.path)", cause: ErrorText(error))
        }
        if let body { try AtomicFile.write(body, to: bodyFile) }
        do {
            try AtomicFile.write(try JSONEncoder.iso.encode(validators), to: validatorFile)
        } catch let error as NimbusError {
            throw error
        } catch {
            throw NimbusError(.io, "could not encode metadata validators", cause: ErrorText(error))
        }
    }
}

extension JSONDecoder {
    static var iso: JSONDecoder {
        let decoder = JSONDecoder()
        decoder.dateDecodingStrategy = .iso8601
        return decoder
    }
}

extension JSONEncoder {
    static var iso: JSONEncoder {
        let encoder = JSONEncoder()
        encoder.dateEncodingStrategy = .iso8601
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        return encoder
    }
}
