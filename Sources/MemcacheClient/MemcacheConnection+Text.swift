import MemcacheProtocol
import UnderstudyPosix

/// The classic text protocol.
extension MemcacheConnection {
    public func get(_ key: [UInt8]) throws(MemcacheError) -> Item? {
        try retrieve("get", keys: [key])[key]
    }

    public func gets(_ keys: [[UInt8]]) throws(MemcacheError) -> [[UInt8]: Item] {
        try retrieve("gets", keys: keys)
    }

    public func gat(_ exptime: Int64, _ keys: [[UInt8]]) throws(MemcacheError) -> [[UInt8]: Item] {
        try retrieve("gat", keys: keys, exptime: exptime)
    }

    public func gats(_ exptime: Int64, _ keys: [[UInt8]]) throws(MemcacheError) -> [[UInt8]: Item] {
        try retrieve("gats", keys: keys, exptime: exptime)
    }

    func retrieve(_ cmd: String, keys: [[UInt8]], exptime: Int64? = nil) throws(MemcacheError) -> [[UInt8]: Item] {
        try send(Self.encode { (o) throws(ProtocolError) in try TextRequest.retrieval(cmd, keys: keys, exptime: exptime, into: &o) })
        var items: [[UInt8]: Item] = [:]
        while true {
            let l = try statusLine()
            if l == Array("END".utf8) { return items }
            guard let h = ValueHeader.parse(l) else { throw .protocolError(.malformed(Bytes.text(l))) }
            items[h.key] = Item(value: try data(h.length), flags: h.flags, cas: h.cas)
        }
    }

    @discardableResult
    public func store(_ cmd: TextRequest.Storage, _ key: [UInt8], _ value: [UInt8], flags: UInt32 = 0,
                      exptime: Int64 = 0, cas: UInt64? = nil) throws(MemcacheError) -> StoreResult {
        try send(Self.encode { (o) throws(ProtocolError) in
            try TextRequest.storage(cmd, key: key, flags: flags, exptime: exptime, value: value, cas: cas, into: &o)
        })
        let l = try statusLine()
        switch String(decoding: l, as: UTF8.self) {
        case "STORED": return .stored
        case "NOT_STORED": return .notStored
        case "EXISTS": return .exists
        case "NOT_FOUND": return .notFound
        default: throw .protocolError(.unexpected(Bytes.text(l)))
        }
    }

    @discardableResult
    public func set(_ key: [UInt8], _ value: [UInt8], flags: UInt32 = 0, exptime: Int64 = 0) throws(MemcacheError) -> StoreResult {
        try store(.set, key, value, flags: flags, exptime: exptime)
    }

    /// Sends with `noreply`: nothing comes back on success. Pair with `noop()` to learn that
    /// the server has processed it.
    public func setNoreply(_ key: [UInt8], _ value: [UInt8], flags: UInt32 = 0, exptime: Int64 = 0) throws(MemcacheError) {
        try send(Self.encode { (o) throws(ProtocolError) in
            try TextRequest.storage(.set, key: key, flags: flags, exptime: exptime, value: value, noreply: true, into: &o)
        })
    }

    /// True if deleted, false if it was not there.
    @discardableResult
    public func delete(_ key: [UInt8]) throws(MemcacheError) -> Bool {
        try keyedBool("delete", key, [], yes: "DELETED")
    }

    @discardableResult
    public func touch(_ key: [UInt8], exptime: Int64) throws(MemcacheError) -> Bool {
        try keyedBool("touch", key, [String(exptime)], yes: "TOUCHED")
    }

    /// The new value, or nil if the key does not exist.
    public func incr(_ key: [UInt8], by delta: UInt64) throws(MemcacheError) -> UInt64? {
        try arithmetic("incr", key, delta)
    }

    public func decr(_ key: [UInt8], by delta: UInt64) throws(MemcacheError) -> UInt64? {
        try arithmetic("decr", key, delta)
    }

    func arithmetic(_ cmd: String, _ key: [UInt8], _ delta: UInt64) throws(MemcacheError) -> UInt64? {
        try send(Self.encode { (o) throws(ProtocolError) in try TextRequest.keyed(cmd, key: key, args: [String(delta)], into: &o) })
        let l = try statusLine()
        if l == Array("NOT_FOUND".utf8) { return nil }
        guard let v = Bytes.parseUInt(l) else { throw .protocolError(.unexpected(Bytes.text(l))) }
        return v
    }

    func keyedBool(_ cmd: String, _ key: [UInt8], _ args: [String], yes: String) throws(MemcacheError) -> Bool {
        try send(Self.encode { (o) throws(ProtocolError) in try TextRequest.keyed(cmd, key: key, args: args, into: &o) })
        let l = try statusLine()
        if l == Array(yes.utf8) { return true }
        if l == Array("NOT_FOUND".utf8) { return false }
        throw .protocolError(.unexpected(Bytes.text(l)))
    }

    public func flushAll(delay: Int64? = nil) throws(MemcacheError) {
        try send(Array((delay.map { "flush_all \($0)\r\n" } ?? "flush_all\r\n").utf8))
        let l = try statusLine()
        guard l == Array("OK".utf8) else { throw .protocolError(.unexpected(Bytes.text(l))) }
    }

    public func version() throws(MemcacheError) -> String {
        try send(Array("version\r\n".utf8))
        let l = try statusLine()
        guard l.starts(with: Array("VERSION ".utf8)) else { throw .protocolError(.unexpected(Bytes.text(l))) }
        return String(decoding: l.dropFirst(8), as: UTF8.self)
    }

    /// `stats [group]` as a dictionary.
    public func stats(_ group: String? = nil) throws(MemcacheError) -> [String: String] {
        try send(Array((group.map { "stats \($0)\r\n" } ?? "stats\r\n").utf8))
        var out: [String: String] = [:]
        while true {
            let l = try statusLine()
            if l == Array("END".utf8) { return out }
            let t = Bytes.tokens(l)
            guard t.count >= 3, Array(t[0]) == Array("STAT".utf8) else { throw .protocolError(.malformed(Bytes.text(l))) }
            out[String(decoding: t[1], as: UTF8.self)] = String(decoding: l[t[2].startIndex...], as: UTF8.self)
        }
    }
}
