/// Classic text-protocol requests, encoded without I/O.
public enum TextRequest {
    public enum Storage: String, Sendable, CaseIterable {
        case set, add, replace, append, prepend, cas
    }

    public static func storage(_ cmd: Storage, key: [UInt8], flags: UInt32, exptime: Int64, value: [UInt8],
                               cas: UInt64? = nil, noreply: Bool = false, into out: inout [UInt8]) throws(ProtocolError) {
        try Key.validate(key)
        out.append(contentsOf: cmd.rawValue.utf8)
        out.append(0x20)
        out.append(contentsOf: key)
        var tail = " \(flags) \(exptime) \(value.count)"
        if cmd == .cas { tail += " \(cas ?? 0)" }
        if noreply { tail += " noreply" }
        tail += "\r\n"
        out.append(contentsOf: tail.utf8)
        out.append(contentsOf: value)
        out.append(contentsOf: [0x0D, 0x0A])
    }

    /// `get`/`gets`/`gat`/`gats` with one or more keys; `exptime` only for the gat forms.
    public static func retrieval(_ cmd: String, keys: [[UInt8]], exptime: Int64? = nil, into out: inout [UInt8]) throws(ProtocolError) {
        out.append(contentsOf: cmd.utf8)
        if let exptime { out.append(contentsOf: " \(exptime)".utf8) }
        for k in keys {
            try Key.validate(k)
            out.append(0x20)
            out.append(contentsOf: k)
        }
        out.append(contentsOf: [0x0D, 0x0A])
    }

    /// A one-key command with trailing arguments: `delete k`, `incr k 5`, `touch k 60`.
    public static func keyed(_ cmd: String, key: [UInt8], args: [String] = [], into out: inout [UInt8]) throws(ProtocolError) {
        try Key.validate(key)
        out.append(contentsOf: cmd.utf8)
        out.append(0x20)
        out.append(contentsOf: key)
        for a in args { out.append(contentsOf: " \(a)".utf8) }
        out.append(contentsOf: [0x0D, 0x0A])
    }
}

/// A `VALUE <key> <flags> <bytes> [<cas>]` header.
public struct ValueHeader: Equatable, Sendable {
    public var key: [UInt8]
    public var flags: UInt32
    public var length: Int
    public var cas: UInt64?

    public static func parse(_ line: [UInt8]) -> ValueHeader? {
        line.withUnsafeBytes { parse($0) }
    }

    /// Scans the line in place: the tap reads one of these per get hit, and splitting it into
    /// arrays of tokens first was five allocations a hit.
    public static func parse(_ line: UnsafeRawBufferPointer) -> ValueHeader? {
        scan(line).map { ValueHeader(key: Array($0.key), flags: $0.flags, length: $0.length, cas: $0.cas) }
    }

    /// The data length of a valid VALUE line, without copying its key: all a proxy relaying
    /// the hit needs.
    public static func dataLength(_ line: UnsafeRawBufferPointer) -> Int? {
        scan(line)?.length
    }

    static func scan(_ line: UnsafeRawBufferPointer) -> (key: UnsafeRawBufferPointer, flags: UInt32, length: Int, cas: UInt64?)? {
        var t = TokenScanner(line)
        guard let v = t.next(), Bytes.equals(v, "VALUE"), let key = t.next(), let f = t.next(), let l = t.next(),
              let flags = Bytes.parseUInt(f), flags <= UInt64(UInt32.max),
              let len = Bytes.parseUInt(l), len <= UInt64(Int32.max) else { return nil }
        var cas: UInt64?
        if let c = t.next() {
            guard let v = Bytes.parseUInt(c) else { return nil }
            cas = v
        }
        guard t.next() == nil else { return nil }
        return (key, UInt32(flags), Int(len), cas)
    }
}
