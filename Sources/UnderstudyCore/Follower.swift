import JournalWire
import MemcacheClient
import MemcacheProtocol
import Synchronization
import UnderstudyPosix

/// The passive role: streams the journal from the peer keeper and keeps the local memcached a
/// copy of the active one. Values come only from the active memcached (Invariant 2).
final class Follower: Sendable {
    struct Options: Sendable {
        var keeper: Endpoint
        var activeMemcached: Endpoint
        var localMemcached: Endpoint
        var secret: [UInt8]
        var stateDir: String
        var epoch: UInt64
        var batchSize = 1000
        /// See `LRUWarmer`; 0: no passes.
        var lruSyncIntervalMs = 0
        /// Told the keeper's epoch at every connect, so the node persists the highest seen.
        var onEpochSeen: @Sendable (UInt64) -> Void = { _ in }
    }

    struct State {
        /// Received, not yet applied; the buffer of a full sync, which may grow to millions.
        /// Chunked: see `ChunkedQueue`.
        var queue = ChunkedQueue<StreamRecord>()
        var runID: UInt64?
        var received: UInt64 = 0
        var applied: UInt64 = 0
        var keeperEnd: UInt64 = 0
        var lagMs: Double = 0
        var phase = "connecting"
        var connected = false
        var inSync = false
        var fullSyncReason: String?
        var progress: FullSyncProgress?
        var lastFullSync: FullSyncReport?
        var lastError: String?
        var counters = FollowerCounters()
        var stopping = false
        /// Promotion in progress: apply what is queued, then stop instead of waiting for more.
        var draining = false
        var channel: JournalChannel?
        /// The applied offset last acked on this connection.
        var ackSent: UInt64?
        var lastInSync: Int64?
        /// Links that reached sync, counted: the retry loop starts over at its shortest wait
        /// only after an attempt got this far.
        var linksInSync = 0
        /// Whether the local memcached holds a complete copy as of `applied` (false from the
        /// moment a full sync is needed until one finishes). Only a valid copy is persisted.
        var copyValid = false
        /// The memcached processes the copy is of and in; a restart of either voids it.
        var identities = Identities()
        /// Who holds the copier. The applier thread does, except while it sleeps waiting for
        /// records (`applierIdle`); then the stream reader may apply what it just read
        /// itself (`readerApplying`), and the applier, woken meanwhile, waits for it to
        /// finish (`applierWaiting`, so the reader knows to wake it). See `readStream`.
        var applierIdle = false
        var readerApplying = false
        var applierWaiting = false

        var pending: Int { queue.count }

        /// In sync, like Redis's link "up" with no sync in progress: connected, holding a
        /// complete copy and applying the stream. How far behind is `lag*`, reported apart.
        mutating func markStreaming() {
            guard connected && copyValid && fullSyncReason == nil else { return }
            if !inSync { linksInSync += 1 }
            phase = "streaming"
            inSync = true
            lastInSync = Clock.unixSeconds()
        }

        mutating func needFullSync(_ reason: String) {
            if fullSyncReason == nil { fullSyncReason = reason }
            copyValid = false
            inSync = false
        }
    }

    let options: Options
    let state: Monitor<State>
    /// The position last saved, and why saving fails if it does. Saves and forgets take
    /// turns under this lock, so a save that saw a valid copy cannot land after the forget
    /// that followed it.
    let savedPosition = Mutex(SavedPosition())
    /// Set when `run` returns. Apart from `state`, whose every change would wake the saver.
    let finished = Monitor(false)
    /// Every connection to either memcached, broken by `stop`: a copy blocked on a host that
    /// vanished fails at once, and after `stop` no write of ours reaches the local memcached,
    /// which a promotion hands to the taps.
    let memcachedLinks = Interrupter()
    let warmer: LRUWarmer?

    init(_ options: Options) {
        self.options = options
        let state = Monitor(State())
        self.state = state
        warmer = options.lruSyncIntervalMs <= 0 ? nil : LRUWarmer(
            .init(active: options.activeMemcached, local: options.localMemcached, intervalMs: options.lruSyncIntervalMs,
                  batchSize: options.batchSize, interrupter: memcachedLinks),
            ready: { state.withLock { $0.phase == "streaming" && $0.copyValid && !$0.stopping && !$0.draining } })
    }

    func start() {
        Threads.start("follower") { [self] in run() }
        warmer?.start()
    }

    func stop() {
        let channel = state.update { s -> JournalChannel? in
            s.stopping = true
            return s.channel
        }
        channel?.stream.socket.shutdown()
        warmer?.stop()
        memcachedLinks.trip()
    }

    /// Applies what has been received and can still be read from the active, then stops.
    /// Bounded: by `timeoutMs` in all, and by `stallMs` without progress. A promotion usually
    /// follows the active's death, and a copy blocked on a host that vanished only ends at the
    /// copier's I/O timeout; the records it holds cannot be read now, so waiting for it
    /// delays the takeover and saves nothing. A live active moves a batch in milliseconds.
    /// A follower between connections has nothing to apply (what it received it applied
    /// before the link was given up; a reconnect resumes from there), so it stops at once.
    /// A node cut off rather than dead keeps what is left unapplied, and writes it to its
    /// recovery file when it demotes.
    func drainAndStop(timeoutMs: Int, stallMs: Int = 500) -> (applied: UInt64, unapplied: Int) {
        let between = state.update { s -> Bool in
            s.draining = true
            return s.phase == "connecting" && !s.connected
        }
        // `applied` moves without waking waiters (the applier's hot path); the wait samples it.
        let stopped = !between && state.wait(until: { $0.phase == "stopped" }, progressing: { $0.applied },
                                             stallMs: stallMs, timeoutMs: timeoutMs)
        stop()
        // From here no write of ours reaches the local memcached (`memcachedLinks`). A copy
        // broken off unwinds at once; give it a moment so the report below is final. A
        // follower between connections has nothing to report, and may be inside a connect to
        // a dead keeper for seconds, so it is not waited for.
        if !stopped && !between {
            _ = state.wait(until: { $0.phase == "stopped" }, timeoutMs: 500) { _, ok in ok }
        }
        return state.withLock { ($0.applied, $0.pending) }
    }

    var draining: Bool { state.withLock { $0.draining } }

    /// Asks for a full sync at the next opportunity (operator `understudy resync`).
    func requestResync(_ reason: String) {
        state.update { $0.needFullSync(reason) }
    }

    var stopping: Bool { state.withLock { $0.stopping } }

    var snapshot: FollowerStatus {
        let warmed = warmer?.counters
        return state.withLock { s in
            var counters = s.counters
            if let warmed { (counters.lruPasses, counters.keysWarmed, counters.keysTrimmed) = warmed }
            return FollowerStatus(keeperAddress: options.keeper.description, keeperRunID: s.runID.map { String($0, radix: 16) },
                                  receivedOffset: s.received, appliedOffset: s.applied,
                                  lagRecords: s.keeperEnd > s.applied ? s.keeperEnd - s.applied : 0, lagMs: s.lagMs,
                                  inSync: s.inSync, lastFullSync: s.lastFullSync, fullSyncProgress: s.progress,
                                  lastError: s.lastError, counters: counters)
        }
    }

    /// The run and offset the local copy is complete through, and the memcached processes it
    /// is of: what `persist` saves, and what a promotion continues. Nil while the copy is
    /// incomplete.
    var completeCopy: FollowerPosition? {
        state.withLock { s in
            guard s.copyValid, let run = s.runID, let local = s.identities.local else { return nil }
            return FollowerPosition(runID: run, applied: s.applied, local: local, active: s.identities.active)
        }
    }

    var phase: String { state.withLock { $0.phase } }
    var lastInSync: Int64? { state.withLock { $0.lastInSync } }

    // MARK: main loop

    func run() {
        var backoffMs = 100
        var lastLogged = ""
        var copier: KeyCopier?
        loadPosition()
        Threads.start("follower-position") { [self] in savePositionLoop() }
        while !stopping {
            let reachedBefore = state.withLock { $0.linksInSync }
            do throws(FollowerFailure) {
                if copier == nil { copier = try makeCopier() }
                try follow(try connect(), copier: copier!)
            } catch {
                // Connecting is not progress: a full sync the active refuses every time (its
                // LRU crawler disabled, say) fails right after each connect, and resetting
                // there retried it ten times a second, with a warning each time, for good.
                // Only a link that reached sync starts the next one over at 100 ms.
                if state.withLock({ $0.linksInSync }) != reachedBefore {
                    backoffMs = 100
                    lastLogged = ""
                }
                if case .memcached = error { copier = nil }
                state.update { s in
                    s.lastError = error.description
                    s.connected = false
                    s.inSync = false
                    s.phase = "connecting"
                }
                // Log a failure when it changes, not every retry of the same one.
                if !stopping && !draining && error.description != lastLogged {
                    Log.warning("follower", "\(error); retrying (every \(backoffMs)–2000 ms while it lasts)")
                    lastLogged = error.description
                }
            }
            persist()
            if stopping || draining { break }
            Clock.sleep(milliseconds: backoffMs)
            backoffMs = min(backoffMs * 2, 2000)
        }
        persist()
        state.update { $0.phase = "stopped" }
        finished.update { $0 = true }
    }

    func makeCopier() throws(FollowerFailure) -> KeyCopier {
        do {
            return KeyCopier(active: try MemcacheConnection(options.activeMemcached, ioTimeoutMs: 5000, interrupter: memcachedLinks),
                             local: try MemcacheConnection(options.localMemcached, ioTimeoutMs: 5000, interrupter: memcachedLinks))
        } catch {
            throw .memcached(error)
        }
    }

    /// Runs a full sync while the stream keeps buffering, then lets the caller replay it.
    /// `base` is the last offset the sync covers (a gap record), or nil for the current one.
    func fullSync(reason: String, base: UInt64? = nil) throws(FollowerFailure) {
        if draining { throw .fullSync("not starting a full sync while being promoted") }
        state.update { s in
            s.copyValid = false
            s.phase = "full_sync"
            s.inSync = false
            s.progress = FullSyncProgress(keys: 0, keysPerSecond: 0, etaSeconds: nil, phase: "start")
        }
        forgetPosition()
        Log.info("follower", "full sync from \(options.activeMemcached) started (\(reason))")
        let sync = FullSync(active: options.activeMemcached, local: options.localMemcached, batchSize: options.batchSize,
                            interrupter: memcachedLinks)
        let report: FullSyncReport
        do {
            report = try sync.run(reason: reason, progress: { [self] p in
                state.update { $0.progress = p }
                Log.info("follower", "full sync: \(p.keys) keys, \(Int(p.keysPerSecond)) keys/s" + (p.etaSeconds.map { ", ETA \(Int($0)) s" } ?? ""))
            }, shouldStop: { [self] in stopping || draining })
        } catch {
            state.update { $0.progress = nil }
            throw .fullSync(error.description)
        }
        state.update { s in
            s.fullSyncReason = nil
            s.copyValid = true
            s.progress = nil
            s.lastFullSync = report
            s.counters.fullSyncs += 1
            s.counters.keysCopied += report.keys
            s.counters.keysDeleted += report.deleted
            if let base { s.applied = max(s.applied, base) }
            s.phase = "streaming"
        }
        Log.info("follower", "full sync done: \(report.keys) keys copied, \(report.deleted) stale deleted in \(report.durationMs) ms (\(Int(Double(report.keys) / max(Double(report.durationMs), 1) * 1000)) keys/s); replaying \(state.withLock { $0.pending }) buffered records")
        persist()
    }
}

enum FollowerFailure: Error, CustomStringConvertible {
    case journal(String)
    case memcached(MemcacheError)
    case fullSync(String)

    var description: String {
        switch self {
        case .journal(let m): return "journal: \(m)"
        case .memcached(let e): return "memcached: \(e)"
        case .fullSync(let m): return "full sync failed: \(m)"
        }
    }
}
