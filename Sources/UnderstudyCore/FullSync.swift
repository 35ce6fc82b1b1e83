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
        let copier: KeyCopier
        do {
            copier = KeyCopier(active: try MemcacheConnection(active, ioTimeoutMs: ioTimeoutMs),
                               local: try MemcacheConnection(local, ioTimeoutMs: ioTimeoutMs))
        } catch {
            throw .memcached(error)
        }
        defer { copier.active.close(); copier.local.close() }
        let expected = (try? copier.active.stats())?["curr_items"].flatMap { Double($0) }

        var seen = Set<UInt64>()
        var copied: UInt64 = 0
        var deleted: UInt64 = 0
        var errors = 0
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

        func tally(_ o: KeyCopier.Outcome) {
            copied += UInt64(o.copied)
            deleted += UInt64(o.deleted)
            errors += o.errors
        }

        // Copy what the active has. The active works on batch i+1 while we parse batch i.
        let activeFeed = MetadumpFeed(active, batchSize: batchSize, ioTimeoutMs: ioTimeoutMs)
        defer { activeFeed.stop() }
        var inFlight: [[UInt8]]?
        do {
            while let batch = try activeFeed.next() {
                if shouldStop() { throw Failure.stopped }
                for k in batch { seen.insert(Self.hash(k)) }
                try copier.sendFetch(batch)
                if let prev = inFlight { tally(try copier.storeFetched(prev)) }
                inFlight = batch
                report("copy")
            }
            if let prev = inFlight { tally(try copier.storeFetched(prev)) }
            errors += try copier.awaitStored() + copier.deferredErrors
            report("delete-stale", force: true)

            // Delete local keys the active does not have.
            let localFeed = MetadumpFeed(local, batchSize: batchSize, ioTimeoutMs: ioTimeoutMs)
            defer { localFeed.stop() }
            while let batch = try localFeed.next() {
                let stale = batch.filter { !seen.contains(Self.hash($0)) }
                if stale.isEmpty { continue }
                errors += try copier.deleteLocal(stale)
                deleted += UInt64(stale.count)
            }
        } catch let e as Failure {
            throw e
        } catch {
            throw .memcached(error as! MemcacheError)
        }
        let ms = Int64((Clock.monoNanos() - started) / 1_000_000)
        if errors > 0 { Log.warning("follower", "full sync finished with \(errors) keys that could not be copied") }
        return FullSyncReport(finishedAt: Clock.unixSeconds(), durationMs: ms, keys: copied, deleted: deleted, reason: reason)
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
