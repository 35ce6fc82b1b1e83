import UnderstudyPosix

/// Idle connections to memcached, reused across client sessions: applications that connect
/// per request (PHP without persistent connections) would otherwise cost memcached a
/// connect and an accept per request.
///
/// memcached fixes a connection's protocol from its first byte, so text and binary
/// connections are pooled apart: a connection that spoke binary would drop a text request.
public final class UpstreamPool: Sendable {
    public enum Dialect: Sendable { case text, binary }

    public let endpoint: Endpoint
    let idle = Monitor<[Dialect: [Socket]]>([:])
    let maxIdle: Int
    /// How long a forwarded request may wait for memcached's first byte back.
    public let ioTimeoutMs: Int

    public init(endpoint: Endpoint, maxIdle: Int = 64, ioTimeoutMs: Int = 5000) {
        self.endpoint = endpoint
        self.maxIdle = maxIdle
        self.ioTimeoutMs = ioTimeoutMs
    }

    /// A pooled connection still in step with the server, if there is one.
    public func takeIdle(_ dialect: Dialect) -> Socket? {
        while let s = idle.withLock({ $0[dialect]?.popLast() }) {
            // An idle connection that is readable was closed (or spoke out of turn): drop it
            // rather than lose the next request on it.
            if (try? s.waitReadable(timeoutMs: 0)) == false { return s }
            s.close()
        }
        return nil
    }

    /// Takes back a connection with nothing in flight and nothing unread.
    public func release(_ socket: Socket, _ dialect: Dialect) {
        let kept = idle.withLock { pools -> Bool in
            guard pools[dialect, default: []].count < maxIdle else { return false }
            pools[dialect, default: []].append(socket)
            return true
        }
        if !kept { socket.close() }
    }

    public func drainIdle() {
        for s in idle.withLock({ p -> [Socket] in defer { p.removeAll() }; return p.values.flatMap { $0 } }) { s.close() }
    }
}
