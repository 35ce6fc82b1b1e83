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

    var counters: (passes: UInt64, keysWarmed: UInt64) { state.withLock { ($0.passes, $0.keysWarmed) } }

    private func run() {
        var lastError = ""
        while !state.wait(until: { $0.stopping }, timeoutMs: options.intervalMs, { s, _ in s.stopping }) {
            guard ready() else { continue }
            do {
                guard try due() else { continue }
                let warmed = try pass()
                state.update { s in
                    s.passes += 1
                    s.keysWarmed += warmed
                }
                lastError = ""
            } catch {
                // Logged once per kind: an unreachable active is the follower's to report.
                let text = "\(error)"
                if text != lastError { Log.warning("follower", "LRU pass: \(text)") }
                lastError = text
            }
        }
    }

    /// The active is at least half full, or has evicted since the last look.
    private func due() throws(MemcacheError) -> Bool {
        let conn = try MemcacheConnection(options.active, ioTimeoutMs: 10_000, interrupter: options.interrupter)
        defer { conn.close() }
        let stats = try conn.stats()
        func number(_ name: String) -> UInt64? { stats[name].flatMap { UInt64($0) } }
        let evictions = number("evictions") ?? 0
        let before = state.update { s -> UInt64? in
            defer { s.evictions = evictions }
            return s.evictions
        }
        if let bytes = number("bytes"), let limit = number("limit_maxbytes"), bytes >= limit / 2 { return true }
        return evictions > (before ?? 0)
    }

    /// Returns how many of the keys the application read on the active the passive holds.
    private func pass() throws -> UInt64 {
        let feed = MetadumpFeed(options.active, batchSize: options.batchSize, onlyFetched: true, interrupter: options.interrupter)
        defer { feed.stop() }
        let local = try MemcacheConnection(options.local, ioTimeoutMs: 10_000, interrupter: options.interrupter)
        defer { local.close() }
        var warmed: UInt64 = 0
        while let keys = try feed.next() {
            if state.withLock({ $0.stopping }) || !ready() { break }
            let replies = try local.pipeline(keys.flatMap { [MetaRequest.get($0, []), MetaRequest.get($0, [])] })
            for i in stride(from: 0, to: replies.count, by: 2) where replies[i].isHit { warmed += 1 }
        }
        return warmed
    }
}
