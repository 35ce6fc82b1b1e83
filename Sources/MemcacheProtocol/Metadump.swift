/// One line of `lru_crawler metadump`.
public struct MetadumpEntry: Equatable, Sendable {
    public var key: [UInt8]
    /// Absolute unix expiry, or nil for "never" (`exp=-1`).
    public var expiry: Int64?
    public var size: Int
    /// `fetch=yes`: read at least once since it was stored.
    public var fetched: Bool
    public var cas: UInt64

    public init(key: [UInt8], expiry: Int64?, size: Int, fetched: Bool = false, cas: UInt64 = 0) {
        self.key = key
        self.expiry = expiry
        self.size = size
        self.fetched = fetched
        self.cas = cas
    }

    /// Parses `key=<percent-encoded> exp=<abs|-1> la=.. cas=.. fetch=.. cls=.. size=..`.
    public static func parse(_ line: [UInt8]) throws(ProtocolError) -> MetadumpEntry {
        try line.withUnsafeBytes { raw in Result { () throws(ProtocolError) in try parse(raw) } }.get()
    }

    /// The same, over a borrowed line: one pass, no allocation but the key. Tags are matched
    /// as bytes: a generic `starts(with:)` against arrays was a sixth of a full sync's
    /// instructions per key.
    public static func parse(_ line: UnsafeRawBufferPointer) throws(ProtocolError) -> MetadumpEntry {
        var key: [UInt8]?
        var exp: Int64?
        var size = 0
        var fetched = false
        var cas: UInt64 = 0
        var tokens = TokenScanner(line)
        while let tok = tokens.next() {
            // Seven fields a line, five wanted: the first byte rules out the rest.
            switch tok.first {
            case UInt8(ascii: "k"):
                guard let v = Bytes.value(of: "key=", in: tok) else { continue }
                guard let k = percentDecode(v) else { throw .malformed("metadump key: \(Bytes.text(Array(line)))") }
                key = k
            case UInt8(ascii: "e"):
                guard let v = Bytes.value(of: "exp=", in: tok) else { continue }
                guard let e = Bytes.parseInt(v) else { throw .malformed("metadump exp: \(Bytes.text(Array(line)))") }
                exp = e
            case UInt8(ascii: "c"):
                guard let v = Bytes.value(of: "cas=", in: tok) else { continue }
                cas = Bytes.parseUInt(v) ?? 0
            case UInt8(ascii: "f"):
                guard let v = Bytes.value(of: "fetch=", in: tok) else { continue }
                fetched = Bytes.equals(v, "yes")
            case UInt8(ascii: "s"):
                guard let v = Bytes.value(of: "size=", in: tok) else { continue }
                size = Int(Bytes.parseUInt(v) ?? 0)
            default:
                continue
            }
        }
        guard let k = key, !k.isEmpty else { throw .malformed("metadump line without key: \(Bytes.text(Array(line)))") }
        return MetadumpEntry(key: k, expiry: (exp == nil || exp! < 0) ? nil : exp, size: size, fetched: fetched, cas: cas)
    }

    /// memcached percent-encodes every byte outside unreserved URI characters.
    @inlinable
    public static func percentDecode<C: Collection>(_ s: C) -> [UInt8]? where C.Element == UInt8 {
        var out: [UInt8] = []
        out.reserveCapacity(s.count)
        var it = s.makeIterator()
        while let c = it.next() {
            if c == UInt8(ascii: "%") {
                guard let h = it.next(), let l = it.next(), let hv = hexValue(h), let lv = hexValue(l) else { return nil }
                out.append(hv << 4 | lv)
            } else {
                out.append(c)
            }
        }
        return out
    }

    @inlinable
    static func hexValue(_ c: UInt8) -> UInt8? {
        switch c {
        case 0x30...0x39: return c - 0x30
        case 0x41...0x46: return c - 0x41 + 10
        case 0x61...0x66: return c - 0x61 + 10
        default: return nil
        }
    }
}
