import Glibc
import Synchronization

/// An owned stream socket (TCP or Unix).
///
/// A class, not a `~Copyable` struct, because a socket is shared between the thread that
/// blocks on it and the thread that stops it: `close()` or `shutdown()` from anywhere wakes
/// a blocked `read`, `write` or `accept`.
///
/// The descriptor number is released only when no call is using it, as Go's `internal/poll`
/// does: a thread between two reads on a socket another thread just closed must not read
/// from whatever socket the kernel hands that number to next (a reconnecting follower's new
/// journal connection, say). Every I/O call goes through `using`; `close()` marks the socket,
/// shuts it down to wake those calls, and the last one out closes the descriptor.
public final class Socket: Sendable {
    public let fd: Int32
    /// What this socket talks to, for error messages.
    public let peer: String
    /// Calls in progress, times two, plus one once closing began. Atomic because a read or
    /// write pays for it: a lock would be a second one per journal frame.
    private let uses = Atomic<Int>(0)

    public init(fd: Int32, peer: String) {
        self.fd = fd
        self.peer = peer
    }

    /// No call can be in progress here (each holds a reference), so a socket still open is
    /// closed now, and one that was closing already had its descriptor closed by its last call.
    deinit {
        if uses.load(ordering: .acquiring) & 1 == 0 { Sys.close(fd) }
    }

    /// Runs `body` with the descriptor, which stays open until `body` returns even if another
    /// thread closes the socket meanwhile. Throws `EBADF` once the socket is closing.
    @inline(__always)
    func using<T>(_ body: (Int32) throws(SystemError) -> T) throws(SystemError) -> T {
        guard enter() else { throw SystemError(errno: EBADF, operation: "use of closed socket \(peer)") }
        defer { leave() }
        return try body(fd)
    }

    private func enter() -> Bool {
        var current = uses.load(ordering: .relaxed)
        while current & 1 == 0 {
            let (done, seen) = uses.compareExchange(expected: current, desired: current + 2, ordering: .acquiring)
            if done { return true }
            current = seen
        }
        return false
    }

    private func leave() {
        // Closing with no call left: this was the last one out.
        if uses.subtract(2, ordering: .acquiringAndReleasing).newValue == 1 { Sys.close(fd) }
    }

    /// Closes the socket: later calls throw, calls in progress are woken (shutdown), and the
    /// descriptor is closed when the last of them returns (at once if none). Idempotent.
    public func close() {
        // Counted as a call itself, so the shutdown below cannot meet a released number.
        guard enter() else { return }
        if uses.bitwiseOr(1, ordering: .acquiringAndReleasing).oldValue & 1 == 0 { Sys.shutdown(fd) }
        leave()
    }

    /// Closes with a reset: bytes not yet sent are dropped, so none of them reaches the peer
    /// later. The tap gives up on memcached this way when requests are in flight and then
    /// journals their keys; closed with a FIN, a write still queued behind a cut link would be
    /// delivered once the link healed, after the follower had copied the key, and the passive
    /// would keep the older value.
    ///
    /// Unlike `close()` there is no shutdown first (it would send the queued bytes ahead of a
    /// FIN), so a thread blocked on the socket is not woken: this is for a socket only its
    /// owner's thread uses, like the tap's upstream connections.
    public func abort() {
        guard enter() else { return }
        // If this fails the close is an ordinary one, which is all that is left to do.
        try? Sys.setResetOnClose(fd, "abort \(peer)")
        uses.bitwiseOr(1, ordering: .acquiringAndReleasing)
        leave()
    }

    /// Wakes any thread blocked on this socket; the descriptor stays valid until `close()`.
    /// After `close()` it does nothing.
    public func shutdown() {
        guard enter() else { return }
        Sys.shutdown(fd)
        leave()
    }

    // MARK: connect

    /// Connects to the first address of `endpoint` that answers within `timeoutMs`.
    public static func connect(to endpoint: Endpoint, timeoutMs: Int) throws(SystemError) -> Socket {
        let addrs = try endpoint.resolve()
        var lastError = SystemError(errno: EHOSTUNREACH, operation: "connect \(endpoint)")
        for addr in addrs {
            do {
                let s = try connect(to: addr, name: endpoint.description, timeoutMs: timeoutMs)
                try Sys.setOption(s.fd, Int32(IPPROTO_TCP), TCP_NODELAY, 1, "TCP_NODELAY \(endpoint)")
                return s
            } catch {
                lastError = error
            }
        }
        throw lastError
    }

    static func connect(to addr: SocketAddress, name: String, timeoutMs: Int) throws(SystemError) -> Socket {
        let (socket, pending) = try startConnect(to: addr, name: name)
        if pending {
            guard try Sys.poll(socket.fd, events: Int16(POLLOUT), timeoutMs: Int32(timeoutMs), "connect \(name)") else {
                throw SystemError(errno: ETIMEDOUT, operation: "connect \(name) (after \(timeoutMs) ms)")
            }
            try socket.finishConnect()
        }
        Sys.setNonBlocking(socket.fd, false)
        return socket
    }

    /// Starts connecting a non-blocking socket to the first address of `endpoint` that does
    /// not refuse at once. `pending`: the handshake is in flight; when the socket turns
    /// writable, `finishConnect` tells how it ended. For event loops, which cannot wait.
    public static func startConnect(to endpoint: Endpoint) throws(SystemError) -> (Socket, pending: Bool) {
        var lastError = SystemError(errno: EHOSTUNREACH, operation: "connect \(endpoint)")
        for addr in try endpoint.resolve() {
            do {
                let started = try startConnect(to: addr, name: endpoint.description)
                try Sys.setOption(started.0.fd, Int32(IPPROTO_TCP), TCP_NODELAY, 1, "TCP_NODELAY \(endpoint)")
                return started
            } catch {
                lastError = error
            }
        }
        throw lastError
    }

    static func startConnect(to addr: SocketAddress, name: String) throws(SystemError) -> (Socket, pending: Bool) {
        let fd = try Sys.socket(addr.family, Int32(SOCK_STREAM.rawValue), name)
        let socket = Socket(fd: fd, peer: name)
        Sys.setNonBlocking(fd, true)
        do {
            try addr.withSockaddr { (sa, len) throws(SystemError) in try Sys.connect(fd, sa, len, name) }
            return (socket, false)
        } catch where error.errno == EINPROGRESS {
            return (socket, true)
        }
    }

    /// How a pending connect ended: returns if it succeeded, throws the reason if not.
    public func finishConnect() throws(SystemError) {
        let err = Sys.socketError(fd)
        if err != 0 { throw SystemError(errno: err, operation: "connect \(peer)") }
    }

    public static func connect(unixPath path: String) throws(SystemError) -> Socket {
        let fd = try Sys.socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), path)
        let socket = Socket(fd: fd, peer: path)
        try withUnixAddress(path) { (sa, len) throws(SystemError) in try Sys.connect(fd, sa, len, path) }
        return socket
    }

    static func withUnixAddress(_ path: String, _ body: (UnsafePointer<sockaddr>, socklen_t) throws(SystemError) -> Void) throws(SystemError) {
        var sun = sockaddr_un()
        sun.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        let capacity = MemoryLayout.size(ofValue: sun.sun_path)
        guard bytes.count < capacity else { throw SystemError(errno: ENAMETOOLONG, operation: "unix socket path \(path)") }
        withUnsafeMutableBytes(of: &sun.sun_path) { dst in
            dst.copyBytes(from: bytes)
            dst[bytes.count] = 0
        }
        let len = socklen_t(MemoryLayout<sa_family_t>.size + bytes.count + 1)
        try withUnsafePointer(to: &sun) { (p) throws(SystemError) in
            try p.withMemoryRebound(to: sockaddr.self, capacity: 1) { (sa) throws(SystemError) in try body(sa, len) }
        }
    }

    /// The connected peer's address, for logs ("who was refused").
    public var remoteAddress: String {
        var st = sockaddr_storage()
        var len = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let rc = withUnsafeMutablePointer(to: &st) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getpeername(fd, $0, &len) } }
        guard rc == 0 else { return peer }
        if Int32(st.ss_family) == AF_UNIX { return "local socket" }
        return withUnsafePointer(to: &st) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { SocketAddress($0, length: len).description } }
    }

    // MARK: I/O

    /// Bounds every later read (`SO_RCVTIMEO`) and write (`SO_SNDTIMEO`): a peer that stalls
    /// mid-reply costs at most this long, then the call throws with `isTimeout`.
    public func setIOTimeout(milliseconds: Int) throws(SystemError) {
        try setIOTimeout(readMs: milliseconds, writeMs: milliseconds)
    }

    /// Separate bounds (0: none). A journal connection times out reads only, to notice a
    /// silent peer; a write blocked on a peer that is alive but busy must not end it, and one
    /// blocked on a dead peer ends when the reader shuts the socket down.
    public func setIOTimeout(readMs: Int, writeMs: Int) throws(SystemError) {
        try Sys.setTimeout(fd, SO_RCVTIMEO, milliseconds: readMs, peer)
        try Sys.setTimeout(fd, SO_SNDTIMEO, milliseconds: writeMs, peer)
    }

    /// Returns 0 at end of stream.
    public func read(into buffer: UnsafeMutableRawBufferPointer) throws(SystemError) -> Int {
        try using { fd throws(SystemError) in try Sys.read(fd, buffer, peer) }
    }

    /// What the socket has without blocking; nil if nothing yet, 0 at end of stream.
    public func readNow(into buffer: UnsafeMutableRawBufferPointer) throws(SystemError) -> Int? {
        try using { fd throws(SystemError) in try Sys.readNow(fd, buffer, peer) }
    }

    public func write(_ bytes: UnsafeRawBufferPointer) throws(SystemError) {
        try using { fd throws(SystemError) in
            var offset = 0
            while offset < bytes.count {
                let rest = UnsafeRawBufferPointer(rebasing: bytes[offset...])
                offset += try Sys.send(fd, rest, peer)
            }
        }
    }

    /// Writes what fits in the socket buffer without blocking; returns how many bytes went.
    public func writeNow(_ bytes: UnsafeRawBufferPointer) throws(SystemError) -> Int {
        try using { fd throws(SystemError) in
            var offset = 0
            while offset < bytes.count {
                let sent = try Sys.sendNow(fd, UnsafeRawBufferPointer(rebasing: bytes[offset...]), peer)
                if sent == 0 { break }
                offset += sent
            }
            return offset
        }
    }

    public func write(_ bytes: [UInt8]) throws(SystemError) {
        try bytes.withUnsafeBytes { raw in Result { () throws(SystemError) in try write(raw) } }.get()
    }

    /// Waits until data (or EOF) can be read. False on timeout.
    public func waitReadable(timeoutMs: Int) throws(SystemError) -> Bool {
        try using { fd throws(SystemError) in try Sys.poll(fd, events: Int16(POLLIN), timeoutMs: Int32(timeoutMs), peer) }
    }
}
