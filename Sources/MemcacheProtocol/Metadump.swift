/// One line of `lru_crawler metadump`.
public struct MetadumpEntry: Equatable, Sendable {
    public var key: [UInt8]
    /// Absolute unix expiry, or nil for "never" (`exp=-1`).
    public var expiry: Int64?
    public var size: Int

    public init(key: [UInt8], expiry: Int64?, size: Int) {
        self.key = key
        self.expiry = expiry
        self.size = size
    }

    /// Parses `key=<percent-encoded> exp=<abs|-1> la=.. cas=.. fetch=.. cls=.. size=..`.
    public static func parse(_ line: [UInt8]) throws(ProtocolError) -> MetadumpEntry {
        var key: [UInt8]?
        var exp: Int64?
        var size = 0
        for tok in Bytes.tokens(line) {
            guard let eq = tok.firstIndex(of: UInt8(ascii: "=")) else { continue }
            let name = tok[tok.startIndex..<eq]
            let value = tok[(eq + 1)...]
            switch Array(name) {
            case Array("key".utf8):
                guard let k = percentDecode(value) else { throw .malformed("metadump key: \(Bytes.text(line))") }
                key = k
            case Array("exp".utf8):
                guard let e = Bytes.parseInt(value) else { throw .malformed("metadump exp: \(Bytes.text(line))") }
                exp = e
            case Array("size".utf8):
                size = Int(Bytes.parseUInt(value) ?? 0)
            default:
                continue
            }
        }
        guard let k = key, !k.isEmpty else { throw .malformed("metadump line without key: \(Bytes.text(line))") }
        return MetadumpEntry(key: k, expiry: (exp == nil || exp! < 0) ? nil : exp, size: size)
    }

    /// memcached percent-encodes every byte outside unreserved URI characters.
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

    static func hexValue(_ c: UInt8) -> UInt8? {
        switch c {
        case 0x30...0x39: return c - 0x30
        case 0x41...0x46: return c - 0x41 + 10
        case 0x61...0x66: return c - 0x61 + 10
        default: return nil
        }
    }
}
