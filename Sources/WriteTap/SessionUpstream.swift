import JournalWire
import UnderstudyPosix

/// What every client session shares: its upstream connection (opened lazily, dropped on
/// failure, reopened on the next request so the tap keeps serving once memcached is back),
/// and the journal emitter with the sync-mode wait.
final class SessionUpstream {
    let proxy: TapProxy
    let dialect: UpstreamPool.Dialect
    private(set) var stream: ByteStream?

    init(proxy: TapProxy, dialect: UpstreamPool.Dialect) {
        self.proxy = proxy
        self.dialect = dialect
    }

    deinit {
        if let stream { proxy.pool.release(stream, dialect) }
    }

    /// The connection, or the reason memcached cannot be reached (for `SERVER_ERROR`).
    func connection() -> Result<ByteStream, SessionFailure> {
        if let stream { return .success(stream) }
        do {
            let s = try proxy.pool.acquire(dialect)
            stream = s
            return .success(s)
        } catch {
            return .failure(SessionFailure("memcached \(proxy.options.memcached) unavailable: \(error)"))
        }
    }

    /// Forgets a connection that is no longer in step with the server.
    func drop() {
        stream?.socket.close()
        stream = nil
    }

    /// Journals a write memcached acknowledged, and in sync/strict mode waits for the follower.
    /// Returns an error text only when the sync policy refuses the client.
    func journal(_ op: RecordOp, _ key: [UInt8]) -> String? {
        let seq = proxy.emitter.emit(op, key: key)
        return proxy.emitter.syncRefusal(seq).map { "not replicated: \($0)" }
    }
}

struct SessionFailure: Error {
    let message: String
    init(_ m: String) { message = m }
}
