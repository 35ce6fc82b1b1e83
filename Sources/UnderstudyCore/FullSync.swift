import Foundation
import MemcacheClient
import MemcacheProtocol
import UnderstudyPosix

/// A full copy of the active into the local memcached (Invariant 6).
///
/// The caller starts buffering the journal stream first; this walks
/// `lru_crawler metadump hash` on the active, copies every key through a `KeyCopier`, then
/// walks the local memcached and deletes what the active lacks. Replaying the buffered
/// stream afterwards covers writes made during the walk.
struct FullSync: Sendable {
    let active: Endpoint
    let local: Endpoint
    var batchSize = 1000
    var ioTimeoutMs = 10_000
    /// Joins every connection the sync opens, so its owner's stop breaks them.
    var interrupter: Interrupter?

    enum Failure: Error, CustomStringConvertible, Sendable {
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

    /// Copier pipelines working at once. memcached serves connections on its worker threads,
    /// so several pipelines keep both servers busy where one leaves them waiting on us.
    var workers = 4

    func run(reason: String, progress: @escaping @Sendable (FullSyncProgress) -> Void,
             shouldStop: @escaping @Sendable () -> Bool) throws(Failure) -> FullSyncReport {
        let started = Clock.monoNanos()
        let probe: MemcacheConnection
        do { probe = try connect(local) } catch { throw .memcached(error) }
        defer { probe.close() }
        let stats = try? probe.stats()
        // An empty local memcached (first sync, or restarted) cannot hold stale keys.
        let localWasEmpty = stats?["curr_items"] == "0"
        let expected = (try? connect(active).stats())?["curr_items"].flatMap { Double($0) }

        let totals = Monitor((copied: UInt64(0), deleted: UInt64(0), errors: 0, failure: Failure?.none))
        let lastReport = Monitor(started)
        let report: @Sendable (String, Bool) -> Void = { phase, force in
            let now = Clock.monoNanos()
            let due = lastReport.update { last -> Bool in
                // Workers race here; another may have reported after our `now` was read.
                guard force || (now > last && now - last > 1_000_000_000) else { return false }
                last = now
                return true
            }
            guard due else { return }
            let t = totals.withLock { $0 }
            let secs = Double(now - started) / 1e9
            let rate = secs > 0 ? Double(t.copied + t.deleted) / secs : 0
            let eta = expected.flatMap { e in rate > 0 ? max(0, (e - Double(t.copied)) / rate) : nil }
            progress(FullSyncProgress(keys: t.copied, keysPerSecond: rate, etaSeconds: phase == "copy" ? eta : nil, phase: phase))
        }

        // Copy what the active has, in parallel pipelines fed by one metadump reader.
        let feed = MetadumpFeed(active, batchSize: batchSize, ioTimeoutMs: ioTimeoutMs, collectHashes: !localWasEmpty,
                                interrupter: interrupter)
        defer { feed.stop() }
        let group = DispatchGroup()
        for w in 0..<max(1, workers) {
            group.enter()
            Threads.start("full-sync-\(w)") { [self] in
                defer { group.leave() }
                do throws(Failure) {
                    try copyWorker(feed: feed, totals: totals, report: report, shouldStop: shouldStop)
                } catch {
                    totals.update { $0.failure = $0.failure ?? error }
                    feed.stop()
                }
            }
        }
        group.wait()
        if let f = totals.withLock({ $0.failure }) { throw f }
        report("delete-stale", true)

        if !localWasEmpty {
            try deleteStale(keep: feed.hashes, totals: totals, shouldStop: shouldStop)
        }
        let t = totals.withLock { $0 }
        let ms = Int64((Clock.monoNanos() - started) / 1_000_000)
        if t.errors > 0 { Log.warning("follower", "full sync finished with \(t.errors) keys that could not be copied") }
        return FullSyncReport(finishedAt: Clock.unixSeconds(), durationMs: ms, keys: t.copied, deleted: t.deleted, reason: reason)
    }

    typealias Totals = Monitor<(copied: UInt64, deleted: UInt64, errors: Int, failure: Failure?)>

    /// One pipeline: the active works on batch i+1 while we parse batch i's replies.
    func copyWorker(feed: MetadumpFeed, totals: Totals, report: (String, Bool) -> Void, shouldStop: () -> Bool) throws(Failure) {
        let copier: KeyCopier
        do {
            copier = KeyCopier(active: try connect(active), local: try connect(local))
        } catch {
            throw .memcached(error)
        }
        defer { copier.active.close(); copier.local.close() }
        func tally(_ o: KeyCopier.Outcome) {
            totals.update { t in
                t.copied += UInt64(o.copied)
                t.deleted += UInt64(o.deleted)
                t.errors += o.errors
            }
        }
        var inFlight: [[UInt8]]?
        do {
            while let batch = try feed.next() {
                if shouldStop() { throw Failure.stopped }
                if totals.withLock({ $0.failure != nil }) { return }
                try copier.sendFetch(batch)
                if let prev = inFlight { tally(try copier.storeFetched(prev)) }
                inFlight = batch
                report("copy", false)
            }
            if let prev = inFlight { tally(try copier.storeFetched(prev)) }
            try copier.returnTokens()
            let errors = try copier.awaitStored() + copier.deferredErrors
            totals.update { $0.errors += errors }
        } catch let e as Failure {
            throw e
        } catch {
            throw .memcached(error as! MemcacheError)
        }
    }

    /// Deletes local keys the active does not have.
    func deleteStale(keep: Set<UInt64>, totals: Totals, shouldStop: () -> Bool) throws(Failure) {
        do {
            let copier = KeyCopier(active: try connect(active), local: try connect(local))
            defer { copier.active.close(); copier.local.close() }
            let localFeed = MetadumpFeed(local, batchSize: batchSize, ioTimeoutMs: ioTimeoutMs, interrupter: interrupter)
            defer { localFeed.stop() }
            while let batch = try localFeed.next() {
                if shouldStop() { throw Failure.stopped }
                let stale = batch.filter { !keep.contains(Self.hash($0)) }
                if stale.isEmpty { continue }
                let errors = try copier.deleteLocal(stale)
                totals.update { t in
                    t.errors += errors
                    t.deleted += UInt64(stale.count)
                }
            }
        } catch let e as Failure {
            throw e
        } catch {
            throw .memcached(error as! MemcacheError)
        }
    }

    func connect(_ endpoint: Endpoint) throws(MemcacheError) -> MemcacheConnection {
        try MemcacheConnection(endpoint, ioTimeoutMs: ioTimeoutMs, interrupter: interrupter)
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
