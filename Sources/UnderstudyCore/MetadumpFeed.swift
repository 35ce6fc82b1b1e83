import MemcacheClient
import MemcacheProtocol
import UnderstudyPosix

/// Reads `lru_crawler metadump hash` on its own connection and thread, handing out batches
/// of keys.
///
/// The dump must be drained as fast as memcached writes it: a crawler blocked on a full
/// socket holds item locks, and an `mg` for a key under them then waits for the crawler —
/// which waits for us. Reading the dump on a separate thread, buffering ahead of the copy,
/// breaks that cycle (the Python reference avoids it by reading the whole dump first).
final class MetadumpFeed: Sendable {
    struct State {
        var batches: [[[UInt8]]] = []
        var done = false
        var failure: FullSync.Failure?
        var entries = 0
        /// FNV-1a hashes of every key, when asked for (the full sync's "what the active has").
        var hashes = Set<UInt64>()
    }

    let endpoint: Endpoint
    let state = Monitor(State())
    let stopFlag = Monitor(false)

    /// `onlyFetched`: hand out only keys the application has read (`fetch=yes`).
    init(_ endpoint: Endpoint, batchSize: Int, ioTimeoutMs: Int = 10_000, collectHashes: Bool = false,
         onlyFetched: Bool = false, interrupter: Interrupter? = nil) {
        self.endpoint = endpoint
        Threads.start("metadump") { [self] in
            read(batchSize: batchSize, ioTimeoutMs: ioTimeoutMs, collectHashes: collectHashes, onlyFetched: onlyFetched,
                 interrupter: interrupter)
        }
    }

    /// The key hashes collected so far (complete once `next()` has returned nil).
    var hashes: Set<UInt64> { state.withLock { $0.hashes } }

    func stop() { stopFlag.update { $0 = true } }

    /// The next batch of keys, nil when the dump is complete. Throws what the reader hit.
    func next() throws(FullSync.Failure) -> [[UInt8]]? {
        let (batch, failure) = state.wait(until: { !$0.batches.isEmpty || $0.done }, timeoutMs: nil) { s, _ -> ([[UInt8]]?, FullSync.Failure?) in
            if !s.batches.isEmpty { return (s.batches.removeFirst(), nil) }
            return (nil, s.failure)
        }
        if let failure { throw failure }
        return batch
    }

    private func read(batchSize: Int, ioTimeoutMs: Int, collectHashes: Bool, onlyFetched: Bool, interrupter: Interrupter?) {
        var hashes = Set<UInt64>()
        var failure: FullSync.Failure?
        do throws(FullSync.Failure) {
            let conn: MemcacheConnection
            do { conn = try MemcacheConnection(endpoint, ioTimeoutMs: ioTimeoutMs, interrupter: interrupter) } catch { throw .memcached(error) }
            defer { conn.close() }
            var batch: [[UInt8]] = []
            batch.reserveCapacity(batchSize)
            try Self.walk(conn, shouldStop: { stopFlag.withLock { $0 } }) { (e) throws(MemcacheError) in
                if collectHashes { hashes.insert(FullSync.hash(e.key)) }
                if onlyFetched && !e.fetched { return }
                batch.append(e.key)
                if batch.count >= batchSize {
                    let full = batch
                    state.update { s in
                        s.batches.append(full)
                        s.entries += full.count
                    }
                    batch.removeAll(keepingCapacity: true)
                }
            }
            if !batch.isEmpty {
                let rest = batch
                state.update { s in
                    s.batches.append(rest)
                    s.entries += rest.count
                }
            }
        } catch {
            failure = error
        }
        state.update { s in
            s.hashes = hashes
            s.done = true
            s.failure = failure
        }
    }

    /// Runs a metadump, retrying with backoff while another crawler holds it (`BUSY`).
    ///
    /// `shouldStop` is also asked every 4096 entries: a caller that stopped ends the dump
    /// (`.stopped`) rather than hold the crawler, one dump at a time per memcached, to its
    /// end, which a full sync or LRU pass starting meanwhile would wait out as `BUSY`. The
    /// connection is then mid-dump, fit only to be closed.
    static func walk(_ conn: MemcacheConnection, shouldStop: () -> Bool,
                     _ each: (MetadumpEntry) throws(MemcacheError) -> Void) throws(FullSync.Failure) {
        var delayMs = 100
        var seen = 0, stoppedMidway = false
        for attempt in 1...60 {
            if shouldStop() { throw .stopped }
            let outcome: MemcacheConnection.DumpOutcome
            do {
                outcome = try conn.metadump { (e) throws(MemcacheError) in
                    seen += 1
                    if seen & 4095 == 0 && shouldStop() {
                        stoppedMidway = true
                        throw .protocolError(.unexpected("metadump stopped by its reader"))
                    }
                    try each(e)
                }
            } catch {
                throw stoppedMidway ? .stopped : .memcached(error)
            }
            if case .complete = outcome { return }
            Log.info("metadump", "lru_crawler on \(conn.peer) is busy (attempt \(attempt)); retrying in \(delayMs) ms")
            Clock.sleep(milliseconds: delayMs)
            delayMs = min(delayMs * 2, 2000)
        }
        throw .busy("lru_crawler on \(conn.peer) stayed busy for 60 attempts")
    }
}
