/// Big-endian field encoding for journal frames.
struct WireWriter {
    var bytes: [UInt8] = []

    mutating func u8(_ v: UInt8) { bytes.append(v) }
    mutating func u16(_ v: UInt16) {
        bytes.append(UInt8(v >> 8))
        bytes.append(UInt8(v & 0xff))
    }
    // One append of the big-endian bytes: a byte at a time was eight capacity checks.
    mutating func u32(_ v: UInt32) { withUnsafeBytes(of: v.bigEndian) { bytes.append(contentsOf: $0) } }
    mutating func u64(_ v: UInt64) { withUnsafeBytes(of: v.bigEndian) { bytes.append(contentsOf: $0) } }
    mutating func i64(_ v: Int64) { u64(UInt64(bitPattern: v)) }
    mutating func raw(_ b: [UInt8]) { bytes += b }
    /// Length-prefixed (u16) bytes: keys and short strings.
    mutating func short(_ b: [UInt8]) {
        u16(UInt16(min(b.count, Int(UInt16.max))))
        if b.count <= Int(UInt16.max) { bytes += b } else { bytes += b.prefix(Int(UInt16.max)) }
    }
}

/// The reading side; every read is bounds-checked and a short frame is a typed error.
///
/// Integers are read in place: through `take` each one was an `ArraySlice` (a retain, a
/// release and a generic `reduce`), and decoding was the keeper's largest cost per record.
struct WireReader {
    let bytes: [UInt8]
    var pos = 0

    init(_ bytes: [UInt8]) { self.bytes = bytes }

    @inline(__always)
    private func need(_ n: Int) throws(JournalError) {
        if n < 0 || bytes.count - pos < n { throw endsEarly(n) }
    }

    private func endsEarly(_ n: Int) -> JournalError {
        .malformed("frame ends early (need \(n) bytes at \(pos) of \(bytes.count))")
    }

    mutating func take(_ n: Int) throws(JournalError) -> ArraySlice<UInt8> {
        try need(n)
        defer { pos += n }
        return bytes[pos..<(pos + n)]
    }

    /// A big-endian unsigned integer of `T`'s width.
    @inline(__always)
    private mutating func integer<T: FixedWidthInteger & UnsignedInteger>(_: T.Type) throws(JournalError) -> T {
        let n = MemoryLayout<T>.size
        try need(n)
        var v: T = 0
        for i in pos..<(pos + n) { v = v << 8 | T(bytes[i]) }
        pos += n
        return v
    }

    mutating func u8() throws(JournalError) -> UInt8 { try integer(UInt8.self) }
    /// 0 or 1; anything else is a malformed frame (one encoding per value).
    mutating func bool() throws(JournalError) -> Bool {
        let b = try u8()
        guard b <= 1 else { throw .malformed("boolean byte \(b)") }
        return b == 1
    }
    mutating func u16() throws(JournalError) -> UInt16 { try integer(UInt16.self) }
    mutating func u32() throws(JournalError) -> UInt32 { try integer(UInt32.self) }
    mutating func u64() throws(JournalError) -> UInt64 { try integer(UInt64.self) }
    mutating func i64() throws(JournalError) -> Int64 { Int64(bitPattern: try u64()) }
    mutating func raw(_ n: Int) throws(JournalError) -> [UInt8] { Array(try take(n)) }
    mutating func short() throws(JournalError) -> [UInt8] { Array(try take(Int(try u16()))) }

    /// True when every byte was read: where a field was added at the end of a message, its
    /// absence means an older sender.
    var atEnd: Bool { pos == bytes.count }

    func finish() throws(JournalError) {
        if pos != bytes.count { throw .malformed("\(bytes.count - pos) trailing bytes in frame") }
    }
}

/// Journal protocol failures.
public enum JournalError: Error, CustomStringConvertible, Sendable, Equatable {
    case malformed(String)
    case unsupportedVersion(UInt8)
    case authenticationFailed(String)
    case refused(String)
    case unexpected(String)

    public var description: String {
        switch self {
        case .malformed(let m): return "malformed journal frame: \(m)"
        case .unsupportedVersion(let v): return "unsupported journal protocol version \(v)"
        case .authenticationFailed(let m): return "journal authentication failed: \(m)"
        case .refused(let m): return "refused by peer: \(m)"
        case .unexpected(let m): return "unexpected journal message: \(m)"
        }
    }
}
