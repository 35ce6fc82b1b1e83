import MemcacheClient
import MemcacheProtocol
import UnderstudyPosix

/// A full copy of the active into the local memcached (Invariant 6).
///
/// The caller starts buffering the journal stream first; this walks
/// `lru_crawler metadump hash` on the active, copies every key through a `KeyCopier`, then
/// walks the local memcached and deletes what the active lacks. Replaying the buffered
/// stream afterwards covers writes made during the walk.
struct FullSync {
    let active: Endpoint
    let local: Endpoint
    var batchSize = 1000
    var ioTimeoutMs = 10_000

    enum Failure: Error, CustomStringConvertible {
        case memcached(MemcacheError)
        case busy(String)
        case stopped

        var description: String {
            switch self {
            case .memcached(let e): return e.description
            case .busy(let m): return m
            case .stopped: return "stopped"
            }
        }
    }

    func run(reason: String, progress: (FullSyncProgress) -> Void, shouldStop: () -> Bool) throws(Failure) -> FullSyncReport {
        let started = Clock.monoNanos()
        do {
            let dumpConn = try MemcacheConnection(active, ioTimeoutMs: ioTimeoutMs)
            defer { dumpConn.close() }
            let copier = KeyCopier(active: try MemcacheConnection(active, ioTimeoutMs: ioTimeoutMs),
                                   local: try MemcacheConnection(local, ioTimeoutMs: ioTimeoutMs))
            defer { copier.active.close(); copier.local.close() }
            let expected = (try? dumpConn.stats())?["curr_items"].flatMap { Double($0) }

            var seen = Set<UInt64>()
            var copied: UInt64 = 0
            var deleted: UInt64 = 0
            var errors = 0
            var batch: [[UInt8]] = []
            var inFlight: [[UInt8]]?
            batch.reserveCapacity(batchSize)
            var lastReport = started

            func report(_ phase: String, force: Bool = false) {
                let now = Clock.monoNanos()
                guard force || now - lastReport > 1_000_000_000 else { return }
                lastReport = now
                let secs = Double(now - started) / 1e9
                let rate = secs > 0 ? Double(copied + deleted) / secs : 0
                let eta = expected.flatMap { e in rate > 0 ? max(0, (e - Double(copied)) / rate) : nil }
                progress(FullSyncProgress(keys: copied, keysPerSecond: rate, etaSeconds: phase == "copy" ? eta : nil, phase: phase))
            }

            // Overlap: the active works on batch i+1 while we parse batch i's replies.
            func ship() throws(MemcacheError) {
                try copier.sendFetch(batch)
                if let prev = inFlight {
                    let o = try copier.storeFetched(prev)
                    copied += UInt64(o.copied); deleted += UInt64(o.deleted); errors += o.errors
                }
                inFlight = batch
                batch.removeAll(keepingCapacity: true)
                report("copy")
            }

            try walk(dumpConn, shouldStop: shouldStop) { (e) throws(MemcacheError) in
                seen.insert(Self.hash(e.key))
                batch.append(e.key)
                if batch.count >= batchSize { try ship() }
            }
            if !batch.isEmpty { try ship() }
            if let prev = inFlight {
                let o = try copier.storeFetched(prev)
                copied += UInt64(o.copied); deleted += UInt64(o.deleted); errors += o.errors
            }
            errors += try copier.awaitStored() + copier.deferredErrors
            report("delete-stale", force: true)

            // Delete local keys the active does not have.
            let localDump = try MemcacheConnection(local, ioTimeoutMs: ioTimeoutMs)
            defer { localDump.close() }
            var stale: [[UInt8]] = []
            try walk(localDump, shouldStop: shouldStop) { (e) throws(MemcacheError) in
                if !seen.contains(Self.hash(e.key)) { stale.append(e.key) }
            }
            var start = 0
            while start < stale.count {
                let chunk = Array(stale[start..<min(stale.count, start + batchSize)])
                errors += try copier.deleteLocal(chunk)
                deleted += UInt64(chunk.count)
                start += batchSize
            }
            let ms = Int64((Clock.monoNanos() - started) / 1_000_000)
            if errors > 0 { Log.warning("follower", "full sync finished with \(errors) keys that could not be copied") }
            return FullSyncReport(finishedAt: Clock.unixSeconds(), durationMs: ms, keys: copied, deleted: deleted, reason: reason)
        } catch let e as Failure {
            throw e
        } catch {
            throw .memcached(error as! MemcacheError)
        }
    }

    /// Runs a metadump, retrying with backoff while another crawler holds the lock (`BUSY`).
    func walk(_ conn: MemcacheConnection, shouldStop: () -> Bool,
              _ each: (MetadumpEntry) throws(MemcacheError) -> Void) throws(Failure) {
        var delayMs = 100
        for attempt in 1...60 {
            if shouldStop() { throw .stopped }
            let outcome: MemcacheConnection.DumpOutcome
            do { outcome = try conn.metadump(each) } catch { throw .memcached(error) }
            if case .complete = outcome { return }
            Log.info("follower", "lru_crawler on \(conn.endpoint) is busy (attempt \(attempt)); retrying in \(delayMs) ms")
            Clock.sleep(milliseconds: delayMs)
            delayMs = min(delayMs * 2, 2000)
        }
        throw .busy("lru_crawler on \(conn.endpoint) stayed busy for 60 attempts")
    }

    /// 64-bit FNV-1a. The set of the active's keys is kept as hashes (8 bytes a key instead of
    /// the key itself); a collision could only spare one stale local key from deletion.
    static func hash(_ key: [UInt8]) -> UInt64 {
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        for b in key {
            h ^= UInt64(b)
            h = h &* 0x100_0000_01b3
        }
        return h
    }
}
