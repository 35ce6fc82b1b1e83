/// The space-separated tokens of a line, found in place, empty ones skipped (memcached
/// tolerates repeated spaces). Allocates nothing, for per-request and per-reply hot paths;
/// `Bytes.tokens` is built on it.
public struct TokenScanner: IteratorProtocol {
    let bytes: UnsafeRawBufferPointer
    var i = 0

    public init(_ bytes: UnsafeRawBufferPointer) { self.bytes = bytes }

    public mutating func next() -> UnsafeRawBufferPointer? {
        let n = bytes.count
        while i < n && bytes[i] == 0x20 { i += 1 }
        guard i < n else { return nil }
        let start = i
        while i < n && bytes[i] != 0x20 { i += 1 }
        return UnsafeRawBufferPointer(rebasing: bytes[start..<i])
    }
}
