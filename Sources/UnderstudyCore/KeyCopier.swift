import MemcacheClient
import MemcacheProtocol
import UnderstudyPosix

/// Copies keys' current state from the active memcached to the local one, in pipelined
/// batches: `mg k v f t` on the active, then `ms k F T q` (or `md k q` on a miss) locally,
/// fenced by `mn`. State-based, so copying a key twice or late is harmless (DESIGN §2).
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

    init(active: MemcacheConnection, local: MemcacheConnection) {
        self.active = active
        self.local = local
    }

    /// Copies `keys` synchronously: when this returns, the local memcached holds their state.
    func copy(_ keys: [[UInt8]]) throws(MemcacheError) -> Outcome {
        try sendFetch(keys)
        var out = try storeFetched(keys)
        out.errors += try awaitStored()
        return out
    }

    /// Stage 1: ask the active for every key's value, flags and remaining TTL.
    func sendFetch(_ keys: [[UInt8]]) throws(MemcacheError) {
        var out: [UInt8] = []
        out.reserveCapacity(keys.count * 40)
        for k in keys {
            guard let (tok, b64) = try? Key.metaToken(k) else { continue }
            out.append(contentsOf: Self.mg)
            out.append(contentsOf: tok)
            out.append(contentsOf: b64 ? Self.fetchFlagsB64 : Self.fetchFlags)
        }
        try active.send(out)
    }

    /// Stage 2: read the active's replies and send the matching local writes (not waiting).
    /// Returns what was queued; errors from the local side arrive with `awaitStored`.
    func storeFetched(_ keys: [[UInt8]]) throws(MemcacheError) -> Outcome {
        var o = Outcome()
        var out: [UInt8] = []
        out.reserveCapacity(keys.count * 64)
        let now = Clock.unixSeconds()
        for k in keys {
            guard let (tok, b64) = try? Key.metaToken(k) else {
                Log.warning("follower", "skipping key that cannot be sent to memcached: \(Bytes.text(k))")
                o.errors += 1
                continue
            }
            let r = try active.readMetaReply()
            switch r.status {
            case .va:
                let value = r.value ?? []
                let exptime = Expiry.exptime(remaining: r.intFlag("t") ?? -1, now: now)
                out.append(contentsOf: Self.ms)
                out.append(contentsOf: tok)
                out.append(contentsOf: " \(value.count) F".utf8)
                out.append(contentsOf: r.flag("f") ?? [0x30])
                out.append(contentsOf: " T\(exptime)".utf8)
                if b64 { out.append(contentsOf: Self.b) }
                out.append(contentsOf: Self.quietEnd)
                out.append(contentsOf: value)
                out.append(contentsOf: Self.crlf)
                o.copied += 1
            case .en:
                out.append(contentsOf: Self.md)
                out.append(contentsOf: tok)
                if b64 { out.append(contentsOf: Self.b) }
                out.append(contentsOf: Self.quietEnd)
                o.deleted += 1
            case .error(let e):
                Log.warning("follower", "active refused mg for \(Bytes.text(k)): \(e)")
                o.errors += 1
            default:
                Log.warning("follower", "unexpected reply \(r.status) to mg for \(Bytes.text(k))")
                o.errors += 1
            }
        }
        out.append(contentsOf: Self.mn)
        if localPending { deferredErrors += try awaitStored() }
        try local.send(out)
        localPending = true
        return o
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
            guard let (tok, b64) = try? Key.metaToken(k) else { continue }
            out.append(contentsOf: Self.md)
            out.append(contentsOf: tok)
            if b64 { out.append(contentsOf: Self.b) }
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
    static let fetchFlags = Array(" v f t\r\n".utf8)
    static let fetchFlagsB64 = Array(" b v f t\r\n".utf8)
    static let quietEnd = Array(" q\r\n".utf8)
    static let crlf = Array("\r\n".utf8)
}
