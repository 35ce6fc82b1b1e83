/// What went wrong at the protocol level, with the offending bytes where there are some.
public enum ProtocolError: Error, CustomStringConvertible, Sendable, Equatable {
    /// Refused before anything was sent: too long, empty, or with spaces/control bytes.
    case invalidKey(String)
    /// The server said `ERROR` (unknown command).
    case unknownCommand
    /// `CLIENT_ERROR ...` from the server.
    case clientError(String)
    /// `SERVER_ERROR ...` from the server (object too large, out of memory, ...).
    case serverError(String)
    /// A reply we cannot parse.
    case malformed(String)
    /// A reply that parses but was not one this request can get.
    case unexpected(String)

    public var description: String {
        switch self {
        case .invalidKey(let r): return "invalid key: \(r)"
        case .unknownCommand: return "server answered ERROR (unknown command)"
        case .clientError(let m): return "CLIENT_ERROR \(m)"
        case .serverError(let m): return "SERVER_ERROR \(m)"
        case .malformed(let l): return "malformed reply: \(l)"
        case .unexpected(let l): return "unexpected reply: \(l)"
        }
    }

    /// Classifies a generic error line, or returns nil if it is not an error line.
    public static func fromErrorLine(_ line: [UInt8]) -> ProtocolError? {
        if line == Array("ERROR".utf8) { return .unknownCommand }
        if line.starts(with: Array("CLIENT_ERROR".utf8)) { return .clientError(Bytes.text(line.dropFirst(13))) }
        if line.starts(with: Array("SERVER_ERROR".utf8)) { return .serverError(Bytes.text(line.dropFirst(13))) }
        return nil
    }
}

/// Small byte helpers shared by the codecs.
public enum Bytes {
    /// Printable text for logs and errors; non-UTF-8 bytes are shown as escapes, and very long
    /// input is cut so one bad line cannot flood a log.
    @inlinable
    public static func text<C: Collection>(_ bytes: C, limit: Int = 200) -> String where C.Element == UInt8 {
        var s = ""
        for b in bytes.prefix(limit) {
            if b >= 0x20 && b < 0x7f { s.unicodeScalars.append(UnicodeScalar(b)) } else { s += "\\x" + hex(b) }
        }
        if bytes.count > limit { s += "…" }
        return s
    }

    @usableFromInline
    static func hex(_ b: UInt8) -> String {
        let digits = Array("0123456789abcdef".utf8)
        return String(decoding: [digits[Int(b >> 4)], digits[Int(b & 15)]], as: UTF8.self)
    }

    /// Parses an unsigned decimal; nil on anything else (including overflow).
    /// Inlinable, as the other generic helpers here: callers in other modules would otherwise
    /// run the unspecialized generic (a profile of full sync spent half its time there).
    @inlinable
    public static func parseUInt<C: Collection>(_ bytes: C) -> UInt64? where C.Element == UInt8 {
        guard !bytes.isEmpty, bytes.count <= 20 else { return nil }
        var v: UInt64 = 0
        for b in bytes {
            guard b >= 0x30 && b <= 0x39 else { return nil }
            let (m, o1) = v.multipliedReportingOverflow(by: 10)
            let (a, o2) = m.addingReportingOverflow(UInt64(b - 0x30))
            if o1 || o2 { return nil }
            v = a
        }
        return v
    }

    @inlinable
    public static func parseInt<C: Collection>(_ bytes: C) -> Int64? where C.Element == UInt8 {
        if bytes.first == UInt8(ascii: "-") {
            guard let v = parseUInt(bytes.dropFirst()), v <= UInt64(Int64.max) else { return nil }
            return -Int64(v)
        }
        guard let v = parseUInt(bytes), v <= UInt64(Int64.max) else { return nil }
        return Int64(v)
    }

    /// The space-separated tokens of a line (see `TokenScanner`), as slices of it. The array
    /// is sized up front: `split` grew it from empty, three or four reallocations for a
    /// storage command's five tokens, on every request.
    public static func tokens(_ line: [UInt8]) -> [ArraySlice<UInt8>] {
        var out: [ArraySlice<UInt8>] = []
        out.reserveCapacity(8)
        line.withUnsafeBytes { all in
            guard let base = all.baseAddress else { return }
            var scanner = TokenScanner(all)
            while let t = scanner.next() {
                let start = t.baseAddress! - base
                out.append(line[start..<(start + t.count)])
            }
        }
        return out
    }

    public static func ascii(_ s: String) -> [UInt8] { Array(s.utf8) }

    /// Whether `bytes` spell `literal`. Comparing with a `String`'s `utf8` view walks the
    /// string's storage a byte at a time: matching `STORED` that way was 1.9% of the tap's
    /// CPU samples on proxied sets.
    @inlinable
    public static func equals<C: Collection<UInt8>>(_ bytes: C, _ literal: StaticString) -> Bool {
        literal.withUTF8Buffer { bytes.count == $0.count && bytes.elementsEqual($0) }
    }

    /// What follows `tag` in `token` (`key=` in `key=abc`), or nil if it does not start so.
    @inlinable @inline(__always)
    public static func value(of tag: StaticString, in token: UnsafeRawBufferPointer) -> UnsafeRawBufferPointer? {
        tag.withUTF8Buffer { t in
            guard token.count >= t.count else { return nil }
            for i in 0..<t.count where token[i] != t[i] { return nil }
            return UnsafeRawBufferPointer(rebasing: token[t.count...])
        }
    }

    /// Appends `v` in decimal without going through `String` (hot encode loops).
    public static func appendDecimal(_ v: Int64, to out: inout [UInt8]) {
        if v < 0 { out.append(UInt8(ascii: "-")) }
        var m = v.magnitude
        if m == 0 { out.append(0x30); return }
        var digits: (UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8,
                     UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8) =
            (0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
        var n = 0
        withUnsafeMutableBytes(of: &digits) { d in
            while m > 0 {
                d[n] = UInt8(truncatingIfNeeded: m % 10) + 0x30
                m /= 10
                n += 1
            }
            while n > 0 {
                n -= 1
                out.append(d[n])
            }
        }
    }
}
