/// Bytes waiting for a non-blocking socket to take them.
public struct WriteBuffer {
    public private(set) var bytes: [UInt8] = []
    private var sent = 0

    public init() {}

    public var pending: Int { bytes.count - sent }
    public var isEmpty: Bool { sent == bytes.count }

    public mutating func append(_ more: UnsafeRawBufferPointer) { bytes.append(contentsOf: more) }
    public mutating func append(_ more: [UInt8]) { bytes.append(contentsOf: more) }
    /// `body` appends to the pending bytes; it must not remove any.
    public mutating func append(with body: (inout [UInt8]) -> Void) { body(&bytes) }
    public mutating func append(_ text: String) { bytes.append(contentsOf: text.utf8) }
    public mutating func append(_ text: StaticString) {
        text.withUTF8Buffer { bytes.append(contentsOf: $0) }
    }

    /// Sends everything, blocking up to the socket's I/O timeout.
    public mutating func flush(to socket: Socket) throws(SystemError) {
        if isEmpty { return }
        try bytes.withUnsafeBytes { raw in
            Result { () throws(SystemError) in try socket.write(UnsafeRawBufferPointer(rebasing: raw[sent...])) }
        }.get()
        clear()
    }

    /// Sends what the socket takes now. True when nothing is left.
    public mutating func flushNow(to socket: Socket) throws(SystemError) -> Bool {
        if isEmpty { return true }
        let n = try bytes.withUnsafeBytes { raw in
            Result { () throws(SystemError) in try socket.writeNow(UnsafeRawBufferPointer(rebasing: raw[sent...])) }
        }.get()
        sent += n
        guard isEmpty else { return false }
        clear()
        return true
    }

    public mutating func clear() {
        // Keep a modest buffer for the next burst; give back what one huge reply grew.
        bytes.removeAll(keepingCapacity: bytes.capacity <= 256 * 1024)
        sent = 0
    }
}
