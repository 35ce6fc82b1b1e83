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
        /// Whether the local memcached holds a complete copy as of `applied` (false from the
        /// moment a full sync is needed until one finishes). Only a valid copy is persisted.
        var copyValid = false
        /// The memcached processes the copy is of and in; a restart of either voids it.
        var identities = Identities()

        var pending: Int { queue.count }

        /// In sync, like Redis's link "up" with no sync in progress: connected, holding a
        /// complete copy and applying the stream. How far behind is `lag*`, reported apart.
        mutating func markStreaming() {
            guard connected && copyValid && fullSyncReason == nil else { return }
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
    /// The position last saved (nil: none on disk). Saves and forgets take turns under this
    /// lock, so a save that saw a valid copy cannot land after the forget that followed it.
    let savedPosition = Mutex<FollowerPosition?>(nil)
    /// Set when `run` returns. Apart from `state`, whose every change would wake the saver.
    let finished = Monitor(false)

    init(_ options: Options) {
        self.options = options
        self.state = Monitor(State())
    }

    func start() { Threads.start("follower") { [self] in run() } }

    func stop() {
        let channel = state.update { s -> JournalChannel? in
            s.stopping = true
            return s.channel
        }
        channel?.stream.socket.shutdown()
    }

    /// Applies what has been received and can still be read from the active, then stops.
    /// Bounded by `timeoutMs`: a dead active cannot be read, so waiting longer is pointless.
    func drainAndStop(timeoutMs: Int) -> (applied: UInt64, unapplied: Int) {
        state.update { $0.draining = true }
        let done = state.wait(until: { $0.phase == "stopped" }, timeoutMs: timeoutMs) { _, ok in ok }
        if !done {
            stop()
            _ = state.wait(until: { $0.phase == "stopped" }, timeoutMs: 2000) { _, ok in ok }
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
        state.withLock { s in
            FollowerStatus(keeperAddress: options.keeper.description, keeperRunID: s.runID.map { String($0, radix: 16) },
                           receivedOffset: s.received, appliedOffset: s.applied,
                           lagRecords: s.keeperEnd > s.applied ? s.keeperEnd - s.applied : 0, lagMs: s.lagMs,
                           inSync: s.inSync, lastFullSync: s.lastFullSync, fullSyncProgress: s.progress, lastError: s.lastError,
                           counters: s.counters)
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
            do throws(FollowerFailure) {
                if copier == nil { copier = try makeCopier() }
                let ch = try connect()
                backoffMs = 100
                lastLogged = ""
                try follow(ch, copier: copier!)
            } catch {
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

    struct Identities: Sendable {
        var local: MemcachedIdentity?
        var active: MemcachedIdentity?
    }

    /// Restores `(run id, offset)` if the local memcached still is the one that holds that copy.
    func loadPosition() {
        guard let pos = FollowerPosition.load(from: options.stateDir) else { return }
        state.update { s in
            s.runID = pos.runID
            s.applied = pos.applied
            s.received = pos.applied
            s.copyValid = true
            s.identities = Identities(local: pos.local, active: pos.active)
        }
        savedPosition.withLock { $0 = pos }
        Log.info("follower", "saved position: run \(String(pos.runID, radix: 16)) offset \(pos.applied)")
    }

    /// Saves the position if the copy is valid and it moved since the last save.
    func persist() {
        savedPosition.withLock { saved in
            let pos = state.withLock { s -> FollowerPosition? in
                guard let run = s.runID, let local = s.identities.local, s.copyValid else { return nil }
                return FollowerPosition(runID: run, applied: s.applied, local: local, active: s.identities.active)
            }
            guard let pos, pos != saved else { return }
            do {
                try pos.save(to: options.stateDir)
                saved = pos
            } catch {
                Log.error("follower", "cannot save position to \(options.stateDir): \(error)")
            }
        }
    }

    /// Removes the saved position, from the moment the copy stops being valid: a follower
    /// restarted mid-sync must not resume a half-made copy.
    func forgetPosition() {
        savedPosition.withLock { saved in
            FollowerPosition.forget(in: options.stateDir)
            saved = nil
        }
    }

    /// Saves the position once a second until the follower stops. This runs on a thread of
    /// its own because a save is two fsyncs (about 1 ms on these VMs, 20 ms at worst): on the
    /// applier, as it was, every record arriving meanwhile waited for them.
    func savePositionLoop() {
        while !finished.wait(until: { $0 }, timeoutMs: 1000, { _, done in done }) {
            persist()
        }
    }

    func makeCopier() throws(FollowerFailure) -> KeyCopier {
        do {
            return KeyCopier(active: try MemcacheConnection(options.activeMemcached, ioTimeoutMs: 5000),
                             local: try MemcacheConnection(options.localMemcached, ioTimeoutMs: 5000))
        } catch {
            throw .memcached(error)
        }
    }

    func connect() throws(FollowerFailure) -> JournalChannel {
        state.update { $0.phase = "connecting" }
        let ch: JournalChannel
        do {
            let (c, keeperEpoch) = try Handshake.connect(options.keeper, secret: options.secret, kind: .follower)
            ch = c
            options.onEpochSeen(keeperEpoch)
        } catch {
            throw .journal(error.description)
        }
        let (run, applied) = state.withLock { ($0.runID ?? 0, $0.applied) }
        do {
            try ch.send(.follow(runID: run, applied: applied, epoch: options.epoch))
            switch try ch.receive() {
            case .resume(let r, let from):
                state.update { s in
                    s.runID = r
                    s.counters.partialResyncs += 1
                    s.received = from - 1
                }
                Log.info("follower", "resuming from offset \(from) of run \(String(r, radix: 16)) (partial resync)")
            case .fullSync(let r, let from):
                state.update { s in
                    let why = s.runID == nil ? "first sync" : s.runID == r ? "offset \(s.applied) no longer in the keeper's backlog" : "keeper run changed"
                    s.runID = r
                    s.applied = from - 1
                    s.received = from - 1
                    s.needFullSync(why)
                }
                forgetPosition()
                Log.info("follower", "keeper asks for a full sync; streaming from offset \(from) meanwhile")
            case .refused(let why):
                throw FollowerFailure.journal("keeper refused: \(why)")
            default:
                throw FollowerFailure.journal("unexpected reply to follow")
            }
            // The keeper pings when idle; silence this long means it (or the link) is gone.
            try ch.stream.socket.setIOTimeout(readMs: JournalTiming.followerSilenceLimitMs, writeMs: 0)
        } catch let e as FollowerFailure {
            ch.stream.socket.close()
            throw e
        } catch {
            ch.stream.socket.close()
            throw .journal("\(error)")
        }
        state.update { s in
            s.connected = true
            s.channel = ch
            s.ackSent = nil
            s.queue.removeAll()
            s.lastError = nil
        }
        return ch
    }

    /// Reads the stream into the queue until the connection ends. Full syncs run meanwhile;
    /// the queue is their buffer.
    func readStream(_ ch: JournalChannel) {
        while true {
            let m: Message
            do { m = try ch.receive() } catch {
                state.update { s in
                    if s.channel === ch {
                        s.connected = false
                        if !s.stopping { s.lastError = "keeper stream: \(error)" }
                    }
                }
                return
            }
            // Wakes the waiters only when the applier can be waiting for this (the queue was
            // empty): a broadcast per frame also woke the ack thread, for nothing, on every
            // record's way to the passive.
            switch m {
            case .stream(let recs):
                state.update(signalling: { s in
                    let wasEmpty = s.pending == 0
                    s.queue.append(contentsOf: recs)
                    if let last = recs.last {
                        s.received = last.offset
                        s.keeperEnd = max(s.keeperEnd, last.offset)
                    }
                    return ((), wasEmpty)
                })
            case .ping(let end, _):
                state.update(signalling: { s in
                    s.keeperEnd = max(s.keeperEnd, end)
                    return ((), false)
                })
            default:
                continue
            }
        }
    }

    func follow(_ ch: JournalChannel, copier: KeyCopier) throws(FollowerFailure) {
        defer {
            state.withLock { s in if s.channel === ch { s.channel = nil } }
            ch.close()
        }
        Threads.start("follower-stream") { [self] in readStream(ch) }
        Threads.start("follower-acks") { [self] in ackLoop(ch) }
        var lastCheck: UInt64 = 0
        while !stopping {
            if Clock.monoNanos() - lastCheck > 1_000_000_000 {
                lastCheck = Clock.monoNanos()
                try checkIdentities(copier)
            }
            if let reason = state.withLock({ $0.fullSyncReason }) {
                try fullSync(reason: reason)
                continue
            }
            let (batch, live) = state.wait(until: { $0.pending > 0 || !$0.connected || $0.stopping || $0.draining || $0.fullSyncReason != nil },
                                           timeoutMs: 200) { s, _ -> ([StreamRecord], Bool) in
                let b = s.queue.popFirst(max: options.batchSize)
                if b.isEmpty && s.connected && s.fullSyncReason == nil { s.lagMs = 0 }
                s.markStreaming()
                return (b, s.connected)
            }
            if batch.isEmpty {
                if draining {
                    Log.info("follower", "drained: applied through offset \(state.withLock { $0.applied })")
                    state.update { $0.stopping = true }
                    return
                }
                if !live { throw .journal(state.withLock { $0.lastError } ?? "keeper connection closed") }
                continue
            }
            try apply(batch, copier: copier)
        }
    }

    /// Acks what the applier could not send itself (see `apply`), and at least every 300 ms
    /// — `followerAlive` while a full sync is running — so the keeper can tell a silent (dead)
    /// follower from a busy one.
    func ackLoop(_ ch: JournalChannel) {
        while true {
            let (news, live) = state.wait(until: { s in
                s.stopping || !s.connected || (s.copyValid && s.applied != s.ackSent) || ch.hasLeftover
            }, timeoutMs: 300) { s, news in (news, s.connected && !s.stopping) }
            guard live else { return }
            do {
                try ch.send { ackNews(always: !news) }
            } catch {
                ch.stream.socket.shutdown()
                return
            }
        }
    }

    /// The ack for the keeper if the applied offset moved since the last one, or `always` (the
    /// periodic one); `followerAlive` while the copy is incomplete. Call under the channel's
    /// send lock, so the applier and the ack thread never both send, or both skip, the news.
    func ackNews(always: Bool) -> [Message] {
        state.withLock { s in
            guard s.copyValid else { return always ? [.followerAlive] : [] }
            guard always || s.applied != s.ackSent else { return [] }
            s.ackSent = s.applied
            return [.followerAck(applied: s.applied)]
        }
    }

    /// Applies a batch in journal order. Within a run of plain key records the keys are
    /// deduplicated: every read happens after every record in the run was journaled, so the
    /// value read is at least as new as any of them. Flush and gap records split runs.
    func apply(_ batch: [StreamRecord], copier: KeyCopier) throws(FollowerFailure) {
        var keys: [[UInt8]] = []
        var seen = Set<BytesKey>(minimumCapacity: batch.count)
        var runEnd: StreamRecord?

        func copyRun() throws(FollowerFailure) {
            guard let last = runEnd else { return }
            let outcome = try copyWithRetry(keys, copier)
            let now = Clock.wallNanos()
            let channel = state.update(signalling: { s -> (JournalChannel?, wake: Bool) in
                s.applied = max(s.applied, last.offset)
                s.counters.recordsApplied += UInt64(keys.count)
                s.counters.keysCopied += UInt64(outcome.copied)
                s.counters.keysDeleted += UInt64(outcome.deleted)
                s.counters.applyErrors += UInt64(outcome.errors)
                s.lagMs = Double(max(0, now - last.stampNanos)) / 1e6
                let wasInSync = s.inSync
                s.markStreaming()
                return (s.channel, s.inSync != wasInSync)
            })
            // The applier acks itself: a sync write waits on this ack, and waking the ack
            // thread for it would add a context switch. If the channel is busy or full, the
            // ack thread takes over.
            if channel?.sendNow({ ackNews(always: false) }) != true { state.update { _ in } }
            keys.removeAll(keepingCapacity: true)
            seen.removeAll(keepingCapacity: true)
            runEnd = nil
        }

        for r in batch {
            switch r.op {
            case .write, .delete, .touch:
                if seen.insert(BytesKey(r.key)).inserted { keys.append(r.key) }
                runEnd = r
            case .flush:
                try copyRun()
                do {
                    try copier.local.flushAll(delay: Bytes.parseInt(r.key))
                } catch {
                    throw .memcached(error)
                }
                state.update { s in
                    s.applied = max(s.applied, r.offset)
                    s.counters.flushes += 1
                }
            case .gap:
                try copyRun()
                state.update { s in s.counters.gaps += 1 }
                Log.warning("follower", "journal gap at offset \(r.offset): full sync")
                try fullSync(reason: "journal gap at offset \(r.offset)", base: r.offset)
            }
        }
        try copyRun()
    }

    /// Copies keys; if the active or local memcached is unreachable, retries (records are
    /// kept, never skipped) until it is back or we are stopped.
    func copyWithRetry(_ keys: [[UInt8]], _ copier: KeyCopier) throws(FollowerFailure) -> KeyCopier.Outcome {
        do {
            var o = try copier.copy(keys)
            o.errors += copier.deferredErrors
            return o
        } catch {
            throw .memcached(error)
        }
    }

    func checkIdentities(_ copier: KeyCopier) throws(FollowerFailure) {
        do {
            let local = try MemcachedIdentity.read(copier.local)
            let active = try MemcachedIdentity.read(copier.active)
            let ids = state.withLock { $0.identities }
            if let old = ids.local, !old.sameProcess(as: local) {
                Log.warning("follower", "local memcached restarted (\(old) → \(local)): its copy is gone; full sync")
                requestResync("local memcached restarted")
            } else if ids.local == nil && state.withLock({ !$0.copyValid }) {
                requestResync("no saved position for this local memcached")
            }
            if let old = ids.active, !old.sameProcess(as: active) {
                Log.warning("follower", "active memcached restarted (\(old) → \(active)); full sync")
                requestResync("active memcached restarted")
            }
            state.update { $0.identities = Identities(local: local, active: active) }
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
        let sync = FullSync(active: options.activeMemcached, local: options.localMemcached, batchSize: options.batchSize)
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
