import MemcacheClient
import MemcacheProtocol
import UnderstudyPosix

/// Copies keys' current state from the active memcached to the local one, in pipelined
/// batches: `mg k u v f t` on the active (`u`: see `MetaRequest.peek`), then `ms k F T q`
/// (or `md k q` on a miss; and `md k I q` after it for an item that waits for a recache:
/// see `MetaReply.awaitsRecache`) locally, fenced by `mn`.
/// A win token a fetch took goes back to the active (`returnTokens`). State-based, so
/// copying a key twice or late is harmless (DESIGN §2).
///
/// Used by both the streaming follower and full sync; one copier is one ordered pipeline per
/// side, which is what gives per-key order (Invariant 4).
final class KeyCopier {
    struct Outcome {
        var copied = 0
        var deleted = 0
        var errors = 0
    }

    let active: MemcacheConnection
    let local: MemcacheConnection
    private var localPending = false
    /// Local write failures found while waiting for an earlier batch; callers fold them in.
    private(set) var deferredErrors = 0
    /// The local write batch, kept between batches: a batch of large values is megabytes,
    /// and building it afresh each time regrew it by copying and had the kernel map and zero
    /// fresh pages for it (a third of a 4 KiB-value full sync's CPU).
    private var storeBatch: [UInt8] = []
    /// Keys whose win token a fetch took from the active, not yet given back. An `mg` of a
    /// stale item (`md k I`) takes the right to recache it, `u` or not; kept, no client of
    /// the application would recache that key until its stale TTL ran out (they are told
    /// `Z`, someone else is on it). See `MetaRequest.markStale`.
    private var tokensWon: [[UInt8]] = []
    /// How many token returns went out ahead of each fetch batch not yet read, oldest first:
    /// a full sync keeps the next batch in flight, so returns ride out with the batch after.
    private var returnsAhead: [Int] = []

    init(active: MemcacheConnection, local: MemcacheConnection) {
        self.active = active
        self.local = local
    }

    /// Copies `keys` synchronously: when this returns, the local memcached holds their state.
    func copy(_ keys: [[UInt8]]) throws(MemcacheError) -> Outcome {
        try sendFetch(keys)
        var out = try storeFetched(keys)
        try returnTokens()
        out.errors += try awaitStored()
        return out
    }

    /// Stage 1: ask the active for every key's value, flags and remaining TTL.
    func sendFetch(_ keys: [[UInt8]]) throws(MemcacheError) {
        var out: [UInt8] = []
        out.reserveCapacity(keys.count * 40)
        returnsAhead.append(try appendTokenReturns(to: &out))
        for k in keys {
            out.append(contentsOf: Self.mg)
            if Self.appendKey(k, to: &out) {
                out.append(contentsOf: Self.fetchFlagsB64)
            } else {
                out.append(contentsOf: Self.fetchFlags)
            }
        }
        try active.send(out)
    }

    /// Appends the wire form of a key; true if it went base64 (and needs the `b` flag).
    /// Keys that cannot be sent at all still get a token so replies stay in step; memcached
    /// answers it with an error that `storeFetched` counts.
    @inline(__always)
    static func appendKey(_ k: [UInt8], to out: inout [UInt8]) -> Bool {
        if Key.isPlain(k) {
            out.append(contentsOf: k)
            return false
        }
        out.append(contentsOf: Base64.encode(k))
        return true
    }

    /// Stage 2: read the active's replies and send the matching local writes (not waiting).
    /// Returns what was queued; errors from the local side arrive with `awaitStored`.
    func storeFetched(_ keys: [[UInt8]]) throws(MemcacheError) -> Outcome {
        try readTokenReturns()
        var o = Outcome()
        var out = storeBatch
        storeBatch = []
        out.removeAll(keepingCapacity: true)
        out.reserveCapacity(keys.count * 64)
        defer { storeBatch = out }
        let now = Clock.unixSeconds()
        for k in keys {
            let h = try active.readFetchHeader()
            if let len = h.dataLength {
                out.append(contentsOf: Self.ms)
                let b64 = Self.appendKey(k, to: &out)
                out.append(0x20)
                Bytes.appendDecimal(Int64(len), to: &out)
                out.append(contentsOf: Self.spaceF)
                if h.flags.isEmpty { out.append(0x30) } else { out.append(contentsOf: h.flags) }
                out.append(contentsOf: Self.spaceT)
                Bytes.appendDecimal(Expiry.exptime(remaining: h.ttl, now: now), to: &out)
                if b64 { out.append(contentsOf: Self.b) }
                out.append(contentsOf: Self.quietEnd)
                try active.readData(len, appendingTo: &out)
                out.append(contentsOf: Self.crlf)
                if h.awaitsRecache { try Self.encode(.markStale(k, quiet: true), into: &out) }
                if h.wonToken { tokensWon.append(k) }
                o.copied += 1
            } else if h.miss {
                out.append(contentsOf: Self.md)
                if Self.appendKey(k, to: &out) { out.append(contentsOf: Self.b) }
                out.append(contentsOf: Self.quietEnd)
                o.deleted += 1
            } else {
                Log.warning("follower", "active refused mg for \(Bytes.text(k)): \(h.other ?? "?")")
                o.errors += 1
            }
        }
        out.append(contentsOf: Self.mn)
        if localPending { deferredErrors += try awaitStored() }
        try local.send(out)
        localPending = true
        return o
    }

    /// Gives back the win tokens the batches read so far took; for when no fetch is in
    /// flight (after a lone batch, at the end of a full sync).
    func returnTokens() throws(MemcacheError) {
        guard !tokensWon.isEmpty else { return }
        var out: [UInt8] = []
        returnsAhead.append(try appendTokenReturns(to: &out))
        try active.send(out)
        try readTokenReturns()
    }

    private func appendTokenReturns(to out: inout [UInt8]) throws(MemcacheError) -> Int {
        defer { tokensWon.removeAll() }
        for k in tokensWon { try Self.encode(.markStale(k), into: &out) }
        return tokensWon.count
    }

    /// Reads the replies to the token returns sent ahead of the oldest batch in flight.
    private func readTokenReturns() throws(MemcacheError) {
        guard !returnsAhead.isEmpty else { return }
        for _ in 0..<returnsAhead.removeFirst() {
            let r = try active.readMetaReply()
            if r.status != .hd && r.status != .nf { Log.warning("follower", "active refused to take back a win token: \(r.status)") }
        }
    }

    /// The rare requests (staleness, tokens) go through `MetaRequest`'s one encoder.
    private static func encode(_ r: MetaRequest, into out: inout [UInt8]) throws(MemcacheError) {
        do { try r.encode(into: &out) } catch { throw .protocolError(error) }
    }

    /// Stage 3: wait for the local `MN`; returns how many local writes failed.
    func awaitStored() throws(MemcacheError) -> Int {
        guard localPending else { return 0 }
        localPending = false
        var errors = 0
        while true {
            let r = try local.readMetaReply()
            if r.status == .mn { return errors }
            if r.status == .nf { continue }  // md of a key we never had: fine
            errors += 1
            Log.warning("follower", "local memcached refused a write: \(r.status)")
        }
    }

    /// Deletes local keys (quiet, fenced).
    func deleteLocal(_ keys: [[UInt8]]) throws(MemcacheError) -> Int {
        var out: [UInt8] = []
        for k in keys {
            out.append(contentsOf: Self.md)
            if Self.appendKey(k, to: &out) { out.append(contentsOf: Self.b) }
            out.append(contentsOf: Self.quietEnd)
        }
        out.append(contentsOf: Self.mn)
        if localPending { deferredErrors += try awaitStored() }
        try local.send(out)
        localPending = true
        return try awaitStored()
    }

    static let mg = Array("mg ".utf8)
    static let ms = Array("ms ".utf8)
    static let md = Array("md ".utf8)
    static let mn = Array("mn\r\n".utf8)
    static let b = Array(" b".utf8)
    static let fetchFlags = Array(" \(MetaRequest.peekFlag) v f t\r\n".utf8)
    static let fetchFlagsB64 = Array(" b \(MetaRequest.peekFlag) v f t\r\n".utf8)
    static let quietEnd = Array(" q\r\n".utf8)
    static let crlf = Array("\r\n".utf8)
    static let spaceF = Array(" F".utf8)
    static let spaceT = Array(" T".utf8)
}
