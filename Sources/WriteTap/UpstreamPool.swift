import UnderstudyPosix

/// Idle connections to memcached, reused across client sessions.
///
/// A client session holds one upstream connection for its whole life, which is what keeps
/// per-client ordering: requests from one client reach memcached on one ordered pipe.
public final class UpstreamPool: Sendable {
    public let endpoint: Endpoint
    let idle = Monitor<[Socket]>([])
    let maxIdle: Int
    let ioTimeoutMs: Int

    public init(endpoint: Endpoint, maxIdle: Int = 64, ioTimeoutMs: Int = 5000) {
        self.endpoint = endpoint
        self.maxIdle = maxIdle
        self.ioTimeoutMs = ioTimeoutMs
    }

    public func acquire() throws(SystemError) -> ByteStream {
        if let s = idle.withLock({ $0.popLast() }) { return ByteStream(s, capacity: 64 * 1024) }
        let s = try Socket.connect(to: endpoint, timeoutMs: 1000)
        try s.setIOTimeout(milliseconds: ioTimeoutMs)
        return ByteStream(s, capacity: 64 * 1024)
    }

    /// Returns a connection that is in step with the server (nothing unread buffered).
    public func release(_ stream: ByteStream) {
        guard stream.buffered == 0 else { stream.socket.close(); return }
        let kept = idle.withLock { list -> Bool in
            guard list.count < maxIdle else { return false }
            list.append(stream.socket)
            return true
        }
        if !kept { stream.socket.close() }
    }

    public func drainIdle() {
        for s in idle.withLock({ l -> [Socket] in defer { l.removeAll() }; return l }) { s.close() }
    }
}
