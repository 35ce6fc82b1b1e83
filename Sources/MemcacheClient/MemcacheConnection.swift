import MemcacheProtocol
import UnderstudyPosix

/// One blocking connection to memcached.
///
/// Not thread-safe: a connection is a single ordered pipe, and ordering is what the follower's
/// per-key guarantee (Invariant 4) rests on. Share by giving each thread its own.
public final class MemcacheConnection {
    /// What this connection talks to (`host:port` or a socket path), for logs.
    public let peer: String
    let stream: ByteStream

    /// Connects within `connectTimeoutMs`; every later read/write is bounded by `ioTimeoutMs`,
    /// so a server that stalls mid-reply yields `.transport(.timeout)` rather than a hang.
    /// With `interrupter`, its owner's stop breaks the connection at once.
    public convenience init(_ endpoint: Endpoint, connectTimeoutMs: Int = 2000, ioTimeoutMs: Int = 5000,
                            interrupter: Interrupter? = nil) throws(MemcacheError) {
        try self.init(peer: endpoint.description, ioTimeoutMs: ioTimeoutMs, interrupter: interrupter) { () throws(SystemError) in
            try Socket.connect(to: endpoint, timeoutMs: connectTimeoutMs)
        }
    }

    /// Connects to a Unix socket: memcached's `-s`, or the tap's socket path.
    public convenience init(unixPath: String, ioTimeoutMs: Int = 5000, interrupter: Interrupter? = nil) throws(MemcacheError) {
        try self.init(peer: unixPath, ioTimeoutMs: ioTimeoutMs, interrupter: interrupter) { () throws(SystemError) in
            try Socket.connect(unixPath: unixPath)
        }
    }

    private init(peer: String, ioTimeoutMs: Int, interrupter: Interrupter?,
                 connect: () throws(SystemError) -> Socket) throws(MemcacheError) {
        self.peer = peer
        do {
            let s = try connect()
            interrupter?.add(s)
            try s.setIOTimeout(milliseconds: ioTimeoutMs)
            self.stream = ByteStream(s, capacity: 256 * 1024)
        } catch {
            throw .connect(error)
        }
    }

    public func close() {
        stream.socket.shutdown()
        stream.socket.close()
    }

    /// Resets the connection (see `Socket.abort`): nothing still queued reaches memcached.
    /// For the thread that owns the connection, after a request whose answer was lost.
    public func abort() {
        stream.socket.abort()
    }

    // MARK: raw plumbing shared by the typed calls

    /// Sends pre-encoded requests in one write (hot paths build their own pipelines).
    public func send(_ bytes: [UInt8]) throws(MemcacheError) {
        do { try stream.flush(then: bytes) } catch { throw .transport(error) }
    }

    func flush() throws(MemcacheError) {
        do { try stream.flush() } catch { throw .transport(error) }
    }

    func line() throws(MemcacheError) -> [UInt8] {
        do { return try stream.readLine() } catch { throw .transport(error) }
    }

    /// Reads `count` bytes of data plus the CRLF that ends a data block.
    func data(_ count: Int) throws(MemcacheError) -> [UInt8] {
        do {
            let d = try stream.readExact(count + 2)
            guard d[count] == 0x0D, d[count + 1] == 0x0A else {
                throw MemcacheError.protocolError(.malformed("data block not terminated by CRLF"))
            }
            return Array(d[0..<count])
        } catch let e as MemcacheError {
            throw e
        } catch {
            throw .transport(error as! StreamError)
        }
    }

    /// A one-line reply; generic error lines become typed errors.
    func statusLine() throws(MemcacheError) -> [UInt8] {
        let l = try line()
        if let err = ProtocolError.fromErrorLine(l) { throw .protocolError(err) }
        return l
    }

    static func encode(_ build: (inout [UInt8]) throws(ProtocolError) -> Void) throws(MemcacheError) -> [UInt8] {
        var out: [UInt8] = []
        do { try build(&out) } catch { throw .protocolError(error) }
        return out
    }
}
