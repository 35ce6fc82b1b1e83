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
/// pipeline goes out in as few `send`s as possible. The blocking face of the same buffers the
/// tap's event loops use without blocking (`ReadBuffer`, `WriteBuffer`).
public final class ByteStream {
    public let socket: Socket
    private let input: ReadBuffer
    /// Written by one thread at a time (a channel's sends hold its lock): unchecked, as
    /// `ReadBuffer`'s storage is.
    @exclusivity(unchecked) private var output = WriteBuffer()

    public init(_ socket: Socket, capacity: Int = 64 * 1024) {
        self.socket = socket
        self.input = ReadBuffer(capacity: capacity)
    }

    public var peer: String { socket.peer }
    /// Bytes already read from the socket but not yet consumed.
    public var buffered: Int { input.count }

    /// Reads more from the socket (blocking, up to the I/O timeout). Returns false at EOF.
    @discardableResult
    public func fill() throws(StreamError) -> Bool {
        do {
            return try input.fill(from: socket, blocking: true, room: 4096) != .endOfStream
        } catch {
            throw streamError(error)
        }
    }

    private func fillOrThrow() throws(StreamError) {
        if try !fill() { throw .closed(peer: peer) }
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
        let (length, total) = try awaitLine(limit: limit, lfOnly: lfOnly)
        let line = input.bytes(0..<length)
        input.consume(total)
        return line
    }

    /// The next line without its CRLF, as a view into the read buffer — no copy. The view is
    /// valid only until the next call that reads from this stream. For hot parsing loops.
    /// With `lfOnly`, lines end at a bare "\n" (and a trailing "\r" stays in the view).
    public func readLineView(limit: Int = 8192, lfOnly: Bool = false) throws(StreamError) -> UnsafeRawBufferPointer {
        let (length, total) = try awaitLine(limit: limit, lfOnly: lfOnly)
        let view = input.view(0..<length)
        input.consume(total)
        return view
    }

    /// Reads until a whole line is buffered; its length without and with the terminator.
    private func awaitLine(limit: Int, lfOnly: Bool) throws(StreamError) -> (length: Int, total: Int) {
        while true {
            if let line = input.line(lfOnly: lfOnly) { return line }
            if input.count > limit { throw .lineTooLong(peer: peer, limit: limit) }
            try fillOrThrow()
        }
    }

    /// Like `readLine`, but returns nil instead of blocking when no full line is buffered.
    public func bufferedLine(limit: Int = 8192) throws(StreamError) -> [UInt8]? {
        if let (length, total) = input.line() {
            let line = input.bytes(0..<length)
            input.consume(total)
            return line
        }
        if input.count > limit { throw .lineTooLong(peer: peer, limit: limit) }
        return nil
    }

    /// Exactly `count` bytes.
    public func readExact(_ count: Int) throws(StreamError) -> [UInt8] {
        while input.count < count { try fillOrThrow() }
        let out = input.bytes(0..<count)
        input.consume(count)
        return out
    }

    /// Exactly `count` bytes, appended to `into` (avoids an intermediate array on hot paths).
    public func readExact(_ count: Int, appendingTo into: inout [UInt8]) throws(StreamError) {
        while input.count < count { try fillOrThrow() }
        input.withBytes(0..<count) { into.append(contentsOf: $0) }
        input.consume(count)
    }

    /// Discards `count` bytes without keeping them (oversize values we refuse).
    public func skip(_ count: Int) throws(StreamError) {
        var left = count
        while !input.discard(&left) { try fillOrThrow() }
    }

    /// Discards input up to and including the next "\n" (resynchronises after an over-long line).
    public func skipLine() throws(StreamError) {
        while true {
            if let lf = input.firstLF() {
                input.consume(lf + 1)
                return
            }
            input.removeAll()
            try fillOrThrow()
        }
    }

    /// Whether a complete CRLF line is already buffered.
    public var hasBufferedLine: Bool { input.line() != nil }

    /// Peeks at the first buffered byte, reading if none is buffered. Nil at EOF.
    public func peekByte() throws(StreamError) -> UInt8? {
        if input.isEmpty, try !fill() { return nil }
        return input.byte(at: 0)
    }

    public func write(_ bytes: [UInt8]) { output.append(bytes) }
    /// Lets `body` append to the output buffer in place (an encoder that would otherwise
    /// build its bytes only to have them copied here).
    public func write(with body: (inout [UInt8]) -> Void) { output.append(with: body) }
    public func write(_ text: String) { output.append(text) }

    public func flush() throws(StreamError) {
        do {
            try output.flush(to: socket)
        } catch {
            throw streamError(error)
        }
    }

    /// Sends whatever is queued, then `bytes` straight from the caller's buffer: a large
    /// pipelined batch (full sync writes megabytes of values) is not copied once more into
    /// the output buffer first.
    public func flush(then bytes: [UInt8]) throws(StreamError) {
        try flush()
        do {
            try socket.write(bytes)
        } catch {
            throw streamError(error)
        }
    }

    /// Sends what the socket takes without blocking and keeps the rest queued for the next
    /// `flush`. True when nothing is left. For a thread that has news but must not stall on a
    /// slow peer (see `JournalChannel.sendNow`).
    public func flushNow() throws(StreamError) -> Bool {
        do {
            return try output.flushNow(to: socket)
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
