/// A meta-protocol request (`mg`, `ms`, `md`, `ma`, `mn`), encoded without I/O.
///
/// Flags are kept as raw tokens (`"v"`, `"T3600"`, `"Oabc"`) because the meta protocol grows
/// new flags between releases and a client should pass through what it does not know.
public struct MetaRequest: Sendable, Equatable {
    public enum Command: String, Sendable {
        case get = "mg", set = "ms", delete = "md", arithmetic = "ma", noop = "mn"
    }

    public var command: Command
    public var key: [UInt8]
    public var flags: [String]
    public var value: [UInt8]?

    public init(_ command: Command, key: [UInt8] = [], flags: [String] = [], value: [UInt8]? = nil) {
        self.command = command
        self.key = key
        self.flags = flags
        self.value = value
    }

    public static func get(_ key: [UInt8], _ flags: [String]) -> MetaRequest { .init(.get, key: key, flags: flags) }
    /// A get that leaves the item as it was (`u`: no LRU bump, no fetched mark, no access
    /// time), for reads that are not the application's: replication and verification. A
    /// plain `mg` marks the item fetched, so every replicated write would look read once:
    /// the app's first real read would then make it active (kept in the warm LRU, as if read
    /// twice), and `evicted_unfetched` / `expired_unfetched` would read near zero.
    public static func peek(_ key: [UInt8], _ flags: [String]) -> MetaRequest { .get(key, [peekFlag] + flags) }
    public static let peekFlag = "u"
    /// `md k I`: marks the item stale, keeping its value and TTL, and clears its sent-token
    /// mark, so the next `mg` wins the right to recache it (`W`). That copies an item's
    /// staleness, and gives back a win token that a read which is not the application's took
    /// (any `mg` of a stale item takes it, `u` or not, and the clients after it are told
    /// `Z`: someone else is recaching). It also bumps the CAS, and it cannot be made
    /// conditional on the item being unchanged (with `I`, `C` passes only for an older CAS).
    public static func markStale(_ key: [UInt8], quiet: Bool = false) -> MetaRequest { .delete(key, quiet ? ["I", "q"] : ["I"]) }
    public static func set(_ key: [UInt8], _ value: [UInt8], _ flags: [String]) -> MetaRequest { .init(.set, key: key, flags: flags, value: value) }
    public static func delete(_ key: [UInt8], _ flags: [String] = []) -> MetaRequest { .init(.delete, key: key, flags: flags) }
    public static func arithmetic(_ key: [UInt8], _ flags: [String] = []) -> MetaRequest { .init(.arithmetic, key: key, flags: flags) }
    public static let noop = MetaRequest(.noop)

    public var isQuiet: Bool { flags.contains("q") }

    /// Appends the wire form to `out`. Keys that are not plain text go out base64 with `b`.
    public func encode(into out: inout [UInt8]) throws(ProtocolError) {
        out.append(contentsOf: command.rawValue.utf8)
        if command == .noop {
            out.append(contentsOf: [0x0D, 0x0A])
            return
        }
        let (token, b64) = try Key.metaToken(key)
        out.append(0x20)
        out.append(contentsOf: token)
        if let value {
            out.append(0x20)
            out.append(contentsOf: String(value.count).utf8)
        }
        for f in flags {
            out.append(0x20)
            out.append(contentsOf: f.utf8)
        }
        if b64 && !flags.contains("b") { out.append(contentsOf: " b".utf8) }
        out.append(contentsOf: [0x0D, 0x0A])
        if let value {
            out.append(contentsOf: value)
            out.append(contentsOf: [0x0D, 0x0A])
        }
    }
}

/// A parsed meta reply. Errors are values here, not throws, so one bad key in a pipelined
/// batch does not lose the other replies.
public struct MetaReply: Sendable, Equatable {
    public enum Status: Sendable, Equatable {
        case hd, va, en, ns, ex, nf, mn
        case error(ProtocolError)
    }

    public var status: Status
    /// Return flags as raw tokens: first byte is the flag letter.
    public var flags: [ArraySlice<UInt8>]
    public var value: [UInt8]?

    public init(status: Status, flags: [ArraySlice<UInt8>] = [], value: [UInt8]? = nil) {
        self.status = status
        self.flags = flags
        self.value = value
    }

    /// The token after flag letter `f`, e.g. `flag("t")` → "3600".
    public func flag(_ letter: Character) -> ArraySlice<UInt8>? {
        let b = letter.asciiValue!
        for t in flags where t.first == b { return t.dropFirst() }
        return nil
    }

    public func intFlag(_ letter: Character) -> Int64? { flag(letter).flatMap { Bytes.parseInt($0) } }

    /// The key the server echoed (`k`), decoded if the reply carries `b`.
    public var key: [UInt8]? {
        guard let k = flag("k") else { return nil }
        return flag("b") != nil ? Base64.decode(k) : Array(k)
    }

    public var isHit: Bool { status == .va || status == .hd }
    /// `X`: the item is stale (`md k I`), served until someone recaches it.
    public var isStale: Bool { flag("X") != nil }
    /// `W`: this read won the right to recache the item (see `MetaRequest.markStale`).
    public var wonToken: Bool { flag("W") != nil }
    /// The item waits for a client to recache it: stale, or its win token is out (`Z`: a
    /// placeholder `mg k N` made, or an `R` refresh under way). memcached cannot be told
    /// "token out", so a copy of such an item is made stale: after a failover its first
    /// reader recaches, where a bare copy of a placeholder would read as an empty value.
    public var awaitsRecache: Bool { isStale || flag("Z") != nil }

    /// Parses a reply header line. Returns the reply and, for `VA`, how many data bytes follow.
    public static func parseHeader(_ line: [UInt8]) -> (MetaReply, dataLength: Int?) {
        if let err = ProtocolError.fromErrorLine(line) { return (MetaReply(status: .error(err)), nil) }
        guard line.count >= 2 else { return (MetaReply(status: .error(.malformed(Bytes.text(line)))), nil) }
        var toks = Bytes.tokens(line)
        guard !toks.isEmpty else { return (MetaReply(status: .error(.malformed(Bytes.text(line)))), nil) }
        let code = toks.removeFirst()
        let status: Status
        switch (code.first!, code.count == 2 ? code.last! : 0) {
        case (UInt8(ascii: "H"), UInt8(ascii: "D")): status = .hd
        case (UInt8(ascii: "V"), UInt8(ascii: "A")): status = .va
        case (UInt8(ascii: "E"), UInt8(ascii: "N")): status = .en
        case (UInt8(ascii: "N"), UInt8(ascii: "S")): status = .ns
        case (UInt8(ascii: "E"), UInt8(ascii: "X")): status = .ex
        case (UInt8(ascii: "N"), UInt8(ascii: "F")): status = .nf
        case (UInt8(ascii: "M"), UInt8(ascii: "N")): status = .mn
        default: return (MetaReply(status: .error(.malformed(Bytes.text(line)))), nil)
        }
        if status == .va {
            guard let lenTok = toks.first, let len = Bytes.parseUInt(lenTok) else {
                return (MetaReply(status: .error(.malformed(Bytes.text(line)))), nil)
            }
            return (MetaReply(status: .va, flags: Array(toks.dropFirst())), Int(len))
        }
        return (MetaReply(status: status, flags: toks), nil)
    }
}
