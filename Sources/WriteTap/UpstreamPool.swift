import UnderstudyPosix

/// Idle connections to memcached, reused across client sessions.
///
/// A client session holds one upstream connection for its whole life, which is what keeps
/// per-client ordering: requests from one client reach memcached on one ordered pipe.
///
/// memcached fixes a connection's protocol from its first byte, so text and binary
/// connections are pooled apart: a connection that spoke binary would drop a text request.
public final class UpstreamPool: Sendable {
    public enum Dialect: Sendable { case text, binary }

    public let endpoint: Endpoint
    let idle = Monitor<[Dialect: [Socket]]>([:])
    let maxIdle: Int
    let ioTimeoutMs: Int

    public init(endpoint: Endpoint, maxIdle: Int = 64, ioTimeoutMs: Int = 5000) {
        self.endpoint = endpoint
        self.maxIdle = maxIdle
        self.ioTimeoutMs = ioTimeoutMs
    }

    public func acquire(_ dialect: Dialect) throws(SystemError) -> ByteStream {
        while let s = idle.withLock({ $0[dialect]?.popLast() }) {
            // An idle connection that is readable was closed (or spoke out of turn): drop it
            // rather than lose the next request on it.
            if (try? s.waitReadable(timeoutMs: 0)) == false { return ByteStream(s, capacity: 64 * 1024) }
            s.close()
        }
        let s = try Socket.connect(to: endpoint, timeoutMs: 1000)
        try s.setIOTimeout(milliseconds: ioTimeoutMs)
        return ByteStream(s, capacity: 64 * 1024)
    }

    /// Returns a connection that is in step with the server (nothing unread buffered).
    public func release(_ stream: ByteStream, _ dialect: Dialect) {
        guard stream.buffered == 0 else { stream.socket.close(); return }
        let kept = idle.withLock { pools -> Bool in
            guard pools[dialect, default: []].count < maxIdle else { return false }
            pools[dialect, default: []].append(stream.socket)
            return true
        }
        if !kept { stream.socket.close() }
    }

    public func drainIdle() {
        for s in idle.withLock({ p -> [Socket] in defer { p.removeAll() }; return p.values.flatMap { $0 } }) { s.close() }
    }
}
