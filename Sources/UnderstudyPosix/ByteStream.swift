import Glibc

/// Why a stream could not deliver what a protocol needed.
public enum StreamError: Error, CustomStringConvertible, Sendable, Equatable {
    /// The peer closed the connection (or vanished) before a reply was complete.
    case closed(peer: String)
    /// The peer sent nothing for longer than the I/O timeout.
    case timeout(peer: String)
    /// A line exceeded the protocol's limit before its CRLF.
    case lineTooLong(peer: String, limit: Int)
    case system(SystemError)

    public var description: String {
        switch self {
        case .closed(let peer): return "connection to \(peer) closed mid-stream"
        case .timeout(let peer): return "timed out waiting for \(peer)"
        case .lineTooLong(let peer, let limit): return "line from \(peer) longer than \(limit) bytes"
        case .system(let e): return e.description
        }
    }
}

/// Buffered reading and writing over a socket, shaped for line-plus-payload protocols.
///
/// Reads land in one growable buffer so that a pipelined batch of replies costs one `read`
/// per socket buffer, not one per reply; writes are gathered and flushed explicitly so a
/// pipeline goes out in as few `send`s as possible.
public final class ByteStream {
    public let socket: Socket
    private var buffer: UnsafeMutableRawBufferPointer
    private var start = 0
    private var end = 0
    public var output: [UInt8] = []

    public init(_ socket: Socket, capacity: Int = 64 * 1024) {
        self.socket = socket
        self.buffer = .allocate(byteCount: capacity, alignment: 16)
        output.reserveCapacity(capacity)
    }

    deinit { buffer.deallocate() }

    public var peer: String { socket.peer }
    /// Bytes already read from the socket but not yet consumed.
    public var buffered: Int { end - start }

    /// Reads more from the socket. Returns false at EOF.
    @discardableResult
    public func fill() throws(StreamError) -> Bool {
        if start == end {
            start = 0
            end = 0
        } else if end == buffer.count {
            if start > 0 {
                buffer.baseAddress!.copyMemory(from: buffer.baseAddress! + start, byteCount: end - start)
                end -= start
                start = 0
            } else {
                let bigger = UnsafeMutableRawBufferPointer.allocate(byteCount: buffer.count * 2, alignment: 16)
                bigger.baseAddress!.copyMemory(from: buffer.baseAddress!, byteCount: end)
                buffer.deallocate()
                buffer = bigger
            }
        }
        let n: Int
        do {
            n = try socket.read(into: UnsafeMutableRawBufferPointer(rebasing: buffer[end...]))
        } catch {
            if error.isTimeout { throw .timeout(peer: peer) }
            if error.errno == ECONNRESET || error.errno == EPIPE { throw .closed(peer: peer) }
            throw .system(error)
        }
        end += n
        return n > 0
    }

    private func fillOrThrow() throws(StreamError) {
        if try !fill() { throw .closed(peer: peer) }
    }

    /// Index where the next line ends: the "\r" of "\r\n", or with `lfOnly` the "\n".
    private func findLineEnd(from: Int, lfOnly: Bool = false) -> Int? {
        guard end - from >= 1, let base = buffer.baseAddress else { return nil }
        var i = from
        while i < end {
            guard let p = memchr(base + i, 0x0A, end - i) else { return nil }
            let nl = UnsafeRawPointer(base).distance(to: UnsafeRawPointer(p))
            if lfOnly { return nl }
            if nl > start && buffer[nl - 1] == 0x0D { return nl - 1 }
            i = nl + 1
        }
        return nil
    }

    /// The next line without its CRLF, or a typed error. Lines past `limit` are refused so a
    /// peer streaming garbage cannot grow our memory without bound.
    public func readLine(limit: Int = 8192) throws(StreamError) -> [UInt8] {
        try readLine(limit: limit, lfOnly: false)
    }

    /// A line ended by a bare "\n" (memcached's metadump output), without the "\n".
    public func readLineLF(limit: Int = 8192) throws(StreamError) -> [UInt8] {
        try readLine(limit: limit, lfOnly: true)
    }

    private func readLine(limit: Int, lfOnly: Bool) throws(StreamError) -> [UInt8] {
        let terminator = lfOnly ? 1 : 2
        while true {
            if let cr = findLineEnd(from: start, lfOnly: lfOnly) {
                let line = Array(UnsafeRawBufferPointer(rebasing: buffer[start..<cr]))
                start = cr + terminator
                return line
            }
            if end - start > limit { throw .lineTooLong(peer: peer, limit: limit) }
            try fillOrThrow()
        }
    }

    /// The next line without its CRLF, as a view into the read buffer — no copy. The view is
    /// valid only until the next call that reads from this stream. For hot parsing loops.
    /// With `lfOnly`, lines end at a bare "\n" (and a trailing "\r" stays in the view).
    public func readLineView(limit: Int = 8192, lfOnly: Bool = false) throws(StreamError) -> UnsafeRawBufferPointer {
        while true {
            if let cr = findLineEnd(from: start, lfOnly: lfOnly) {
                let view = UnsafeRawBufferPointer(rebasing: buffer[start..<cr])
                start = cr + (lfOnly ? 1 : 2)
                return view
            }
            if end - start > limit { throw .lineTooLong(peer: peer, limit: limit) }
            try fillOrThrow()
        }
    }

    /// Like `readLine`, but returns nil instead of blocking when no full line is buffered.
    public func bufferedLine(limit: Int = 8192) throws(StreamError) -> [UInt8]? {
        if let cr = findLineEnd(from: start) {
            let line = Array(UnsafeRawBufferPointer(rebasing: buffer[start..<cr]))
            start = cr + 2
            return line
        }
        if end - start > limit { throw .lineTooLong(peer: peer, limit: limit) }
        return nil
    }

    /// Exactly `count` bytes.
    public func readExact(_ count: Int) throws(StreamError) -> [UInt8] {
        while end - start < count { try fillOrThrow() }
        let out = Array(UnsafeRawBufferPointer(rebasing: buffer[start..<(start + count)]))
        start += count
        return out
    }

    /// Exactly `count` bytes, appended to `into` (avoids an intermediate array on hot paths).
    public func readExact(_ count: Int, appendingTo into: inout [UInt8]) throws(StreamError) {
        while end - start < count { try fillOrThrow() }
        into.append(contentsOf: UnsafeRawBufferPointer(rebasing: buffer[start..<(start + count)]))
        start += count
    }

    /// Discards `count` bytes without keeping them (oversize values we refuse).
    public func skip(_ count: Int) throws(StreamError) {
        var left = count
        while left > 0 {
            if start == end { try fillOrThrow() }
            let n = Swift.min(left, end - start)
            start += n
            left -= n
        }
    }

    /// Discards input up to and including the next "\n" (resynchronises after an over-long line).
    public func skipLine() throws(StreamError) {
        while true {
            if let nl = findLineEnd(from: start, lfOnly: true) {
                start = nl + 1
                return
            }
            start = end
            try fillOrThrow()
        }
    }

    /// Whether a complete CRLF line is already buffered.
    public var hasBufferedLine: Bool { findLineEnd(from: start) != nil }

    /// Peeks at the first buffered byte, reading if none is buffered. Nil at EOF.
    public func peekByte() throws(StreamError) -> UInt8? {
        if start == end, try !fill() { return nil }
        return buffer[start]
    }

    public func write(_ bytes: [UInt8]) { output.append(contentsOf: bytes) }
    public func write(_ bytes: ArraySlice<UInt8>) { output.append(contentsOf: bytes) }
    public func write(_ text: String) { output.append(contentsOf: text.utf8) }

    public func flush() throws(StreamError) {
        guard !output.isEmpty else { return }
        try send(output)
        output.removeAll(keepingCapacity: true)
    }

    /// Sends whatever is queued, then `bytes` straight from the caller's buffer: a large
    /// pipelined batch (full sync writes megabytes of values) is not copied once more into
    /// the output buffer first.
    public func flush(then bytes: [UInt8]) throws(StreamError) {
        try flush()
        try send(bytes)
    }

    /// Sends what the socket takes without blocking and keeps the rest queued for the next
    /// `flush`. True when nothing is left. For a thread that has news but must not stall on a
    /// slow peer (see `JournalChannel.sendNow`).
    public func flushNow() throws(StreamError) -> Bool {
        guard !output.isEmpty else { return true }
        let sent: Int
        do {
            sent = try output.withUnsafeBytes { raw in Result { () throws(SystemError) in try socket.writeNow(raw) } }.get()
        } catch {
            throw streamError(error)
        }
        output.removeFirst(sent)
        return output.isEmpty
    }

    private func send(_ bytes: [UInt8]) throws(StreamError) {
        do {
            try socket.write(bytes)
        } catch {
            throw streamError(error)
        }
    }

    private func streamError(_ error: SystemError) -> StreamError {
        if error.isTimeout { return .timeout(peer: peer) }
        if error.errno == EPIPE || error.errno == ECONNRESET { return .closed(peer: peer) }
        return .system(error)
    }
}
