import MemcacheClient
import MemcacheProtocol
import UnderstudyPosix

/// Keeps the passive's LRU in step with the active's, so that once both are full they evict
/// the same kind of item.
///
/// Replication writes the passive and reads nothing there, so its LRU is the order of the
/// writes. The active evicts what the application stopped reading; the passive, its oldest
/// writes: the long-lived keys the application reads most. Measured here (two 8 MiB
/// memcacheds, 300 keys of 4 KiB read all the time, 16 MiB of other writes after them): the
/// active kept all 300 and the passive none, so a failover would have lost the hot set.
///
/// So every `interval`, while the active is at least half full or has evicted since the last
/// look, a pass lists the keys the application has read on the active (metadump's
/// `fetch=yes`; replication's own reads leave that mark alone, see `MetaRequest.peek`) and
/// reads each twice on the passive: an item read twice is active in memcached's segmented
/// LRU and goes to its warm segment, as the application's reads took it there on the
/// active. Reads only, of the local memcached: nothing is written, so a pass needs no place
/// in the copy's per-key order and runs beside the applier.
///
/// The same pass trims: keys the active evicted are still on the passive, where they take
/// the room the active's keys need. A local key the active's dump lacked, and a peek then
/// finds gone, is deleted with `md k C<cas>`, the CAS the local dump showed: if the applier
/// copied the key again since (the application wrote it anew), its CAS moved and the delete
/// fails, so the trim never removes a copy it did not look at.
final class LRUWarmer: Sendable {
    struct Options: Sendable {
        var active: Endpoint
        var local: Endpoint
        var intervalMs: Int
        var batchSize: Int
        /// The follower's: its `stop` breaks a pass's connections too.
        var interrupter: Interrupter?
    }

    struct State {
        var stopping = false
        var passes: UInt64 = 0
        var keysWarmed: UInt64 = 0
        var keysTrimmed: UInt64 = 0
        /// The active's `evictions` at the last look.
        var evictions: UInt64?
    }

    let options: Options
    let state = Monitor(State())
    /// Whether the copy is complete and streaming. A full sync rewrites the passive and holds
    /// the active's crawler (one metadump at a time); a pass waits for it.
    let ready: @Sendable () -> Bool

    init(_ options: Options, ready: @escaping @Sendable () -> Bool) {
        self.options = options
        self.ready = ready
    }

    func start() { Threads.start("lru-warmer") { [self] in run() } }

    func stop() { state.update { $0.stopping = true } }

    var counters: (passes: UInt64, keysWarmed: UInt64, keysTrimmed: UInt64) {
        state.withLock { ($0.passes, $0.keysWarmed, $0.keysTrimmed) }
    }

    private func run() {
        var lastError = ""
        while !state.wait(until: { $0.stopping }, timeoutMs: options.intervalMs, { s, _ in s.stopping }) {
            guard ready() else { continue }
            do {
                // One connection to the active serves the look at its stats and the trim's peeks.
                let active = try connect(options.active)
                defer { active.close() }
                guard try due(active) else { continue }
                let (warmed, trimmed) = try pass(active)
                state.update { s in
                    s.passes += 1
                    s.keysWarmed += warmed
                    s.keysTrimmed += trimmed
                }
                lastError = ""
            } catch {
                // Cut short by `stop`, or by a full sync that needs the crawler: not a failure.
                if case .stopped? = error as? FullSync.Failure { continue }
                // Logged once per kind: an unreachable active is the follower's to report.
                let text = "\(error)"
                if text != lastError { Log.warning("follower", "LRU pass: \(text)") }
                lastError = text
            }
        }
    }

    private func connect(_ endpoint: Endpoint) throws(MemcacheError) -> MemcacheConnection {
        try MemcacheConnection(endpoint, ioTimeoutMs: 10_000, interrupter: options.interrupter)
    }

    /// The active is at least half full, or has evicted since the last look.
    private func due(_ active: MemcacheConnection) throws(MemcacheError) -> Bool {
        let stats = try active.stats()
        func number(_ name: String) -> UInt64? { stats[name].flatMap { UInt64($0) } }
        let evictions = number("evictions") ?? 0
        let before = state.update { s -> UInt64? in
            defer { s.evictions = evictions }
            return s.evictions
        }
        if let bytes = number("bytes"), let limit = number("limit_maxbytes"), bytes >= limit / 2 { return true }
        return evictions > (before ?? 0)
    }

    /// Returns how many keys the application read on the active the passive holds, and how
    /// many keys the active lacks it deleted.
    private func pass(_ active: MemcacheConnection) throws -> (warmed: UInt64, trimmed: UInt64) {
        let feed = MetadumpFeed(options.active, batchSize: options.batchSize, collectHashes: true, onlyFetched: true,
                                interrupter: options.interrupter)
        defer { feed.stop() }
        let local = try connect(options.local)
        defer { local.close() }
        var warmed: UInt64 = 0
        while let keys = try feed.next() {
            if !going { return (warmed, 0) }
            let replies = try local.pipeline(keys.flatMap { [MetaRequest.get($0, []), MetaRequest.get($0, [])] })
            for i in stride(from: 0, to: replies.count, by: 2) where replies[i].isHit { warmed += 1 }
        }
        return (warmed, try trim(keeping: feed.hashes, local: local, active: active))
    }

    private var going: Bool { !state.withLock { $0.stopping } && ready() }

    /// Deletes the local keys that are not in `activeKeys` (the active's dump) and that a
    /// peek finds gone from the active, each only if unchanged since the local dump.
    private func trim(keeping activeKeys: Set<UInt64>, local: MemcacheConnection, active: MemcacheConnection) throws -> UInt64 {
        // The local dump is read to its end before any request goes to the local memcached:
        // the crawler holds item locks while it writes.
        var extras: [(key: [UInt8], cas: UInt64)] = []
        try MetadumpFeed.walk(local, shouldStop: { !going }) { e in
            if !activeKeys.contains(FullSync.hash(e.key)) { extras.append((e.key, e.cas)) }
        }
        if extras.isEmpty { return 0 }
        var trimmed: UInt64 = 0
        for start in stride(from: 0, to: extras.count, by: options.batchSize) {
            if !going { break }
            let batch = extras[start..<min(extras.count, start + options.batchSize)]
            let onActive = try active.peek(batch.map(\.key), [])
            let gone = zip(batch, onActive).filter { $0.1.status == .en }.map(\.0)
            if gone.isEmpty { continue }
            trimmed += UInt64(try Self.deleteUnchanged(gone, on: local))
        }
        if trimmed > 0 { Log.info("follower", "LRU pass: deleted \(trimmed) keys the active no longer has") }
        return trimmed
    }

    /// Deletes each key only while its CAS is still `cas` (`md k C<cas>`), and returns how
    /// many went. Between the local dump and this delete the applier may have copied the key
    /// again, because the application wrote it anew on the active after the peek found it
    /// gone; that copy has a new CAS and must survive.
    static func deleteUnchanged(_ items: [(key: [UInt8], cas: UInt64)], on local: MemcacheConnection) throws(MemcacheError) -> Int {
        let refused = try local.quietBatch(items.map { MetaRequest.delete($0.key, ["C\($0.cas)"]) })
        return items.count - refused.count
    }
}
