import JournalWire
import UnderstudyPosix

/// The active role: receives tap records, numbers them `(run id, offset)`, keeps the backlog,
/// streams it to the follower, and relays the follower's applied offset back to sync taps.
final class Keeper: Sendable {
    struct TapState {
        /// Highest tap sequence journaled for this tap id in this run.
        var lastSeq: UInt64 = 0
        /// (journal offset, tap seq) of the last record of recent batches, oldest first,
        /// for turning the follower's applied offset into this tap's applied seq.
        var marks: [(offset: UInt64, seq: UInt64)] = []
        var appliedSeq: UInt64 = 0
        /// When this tap's writer was last woken to ack journaled records (monotonic ns):
        /// acks only free the tap's buffer, so they are not worth a wake-up per batch.
        var lastAckWake: UInt64 = 0
    }

    struct State {
        var backlog: Backlog
        var taps: [BytesKey: TapState] = [:]
        /// The taps connected (welcomed) now.
        var tapLinks: [ObjectIdentifier: TapLink] = [:]
        var followerConnection: Socket?
        var followerLink: FollowerLink?
        var followerID = 0
        var followerApplied: UInt64 = 0
        var followerInSync = false
        var followerAddress = ""
        /// Monotonic time of the follower's last ack; it acks at least every 500 ms, so
        /// silence means a dead node or link even when TCP has not noticed.
        var followerLastAck: UInt64 = 0
        var stopping = false
        /// Handing over (see `handOver`): tap records are turned away, and follower acks wake
        /// waiters.
        var tapsClosed = false
        var counters = KeeperCounters()

        /// The follower has applied the journal to its end.
        var followerCaughtUp: Bool { followerApplied >= backlog.lastOffset }
    }

    /// The run a keeper continues, as Redis's PSYNC2 keeps its master's replication id: a
    /// node promoted from a follower holds that run's state through `offset`, so its journal
    /// goes on from `offset + 1`, and the peer it followed (the old keeper, now following in
    /// turn) resumes from the backlog instead of copying everything again, if it holds exactly
    /// that state: the same run, ended at the same offset (a switchover that handed the
    /// journal over). Anything else full syncs as before.
    struct Lineage: Sendable, Equatable {
        var runID: UInt64
        var offset: UInt64
    }

    let runID: UInt64
    let epoch: UInt64
    let lineage: Lineage?
    let state: Monitor<State>
    /// Called when a peer shows an epoch above ours: this keeper is stale and must step down.
    let onHigherEpoch: @Sendable (UInt64) -> Void

    init(backlogBytes: Int, epoch: UInt64, continuing lineage: Lineage? = nil,
         onHigherEpoch: @escaping @Sendable (UInt64) -> Void = { _ in }) {
        var g = SystemRandomNumberGenerator()
        self.runID = UInt64.random(in: 1...UInt64.max >> 1, using: &g)
        self.epoch = epoch
        self.lineage = lineage
        self.onHigherEpoch = onHigherEpoch
        var s = State(backlog: Backlog(limitBytes: backlogBytes, firstOffset: (lineage?.offset ?? 0) + 1))
        // The continued run's records are on the peer already: they came from it.
        s.followerApplied = lineage?.offset ?? 0
        self.state = Monitor(s)
    }

    /// Records no follower has applied: what only this node accepted. Also how many such
    /// records already fell out of the backlog (their keys are unknown).
    func orphans() -> (records: [StreamRecord], lost: UInt64) {
        state.withLock { s in
            let from = max(s.followerApplied, lineage?.offset ?? 0) + 1
            let lost = s.backlog.firstOffset > from ? s.backlog.firstOffset - from : 0
            let recs = s.backlog.read(from: max(from, s.backlog.firstOffset), max: Int.max) ?? []
            return (recs, lost)
        }
    }

    /// Stops journaling, then lets an in-sync follower apply the journal to its end for as
    /// long as it makes progress (`stallMs` without an ack that moves, `timeoutMs` in all);
    /// true if it did. In a planned switchover the cluster manager takes the VIP away first,
    /// so the records still in flight are the last few milliseconds' worth; without this they
    /// went to the recovery file (acknowledged writes missing on the new active until an
    /// operator replays them), and now they reach the peer. A fixed 2 s wait cut short a
    /// follower with a burst to apply on a loaded machine; one that stops acking is stuck,
    /// and is not waited for. Taps stay connected meanwhile and hear what the follower
    /// applies, so a sync write in flight is answered as replicated; a record a tap sends now
    /// is neither journaled nor acknowledged, and the tap resends it to the next keeper.
    func handOver(timeoutMs: Int, stallMs: Int) -> Bool {
        state.update { $0.tapsClosed = true }
        _ = state.wait(until: { s in s.followerConnection == nil || !s.followerInSync || s.followerCaughtUp },
                       progressing: { $0.followerApplied }, stallMs: stallMs, timeoutMs: timeoutMs)
        return state.withLock { $0.followerCaughtUp }
    }

    func stop() {
        let follower = state.update { s -> Socket? in
            s.stopping = true
            return s.followerConnection
        }
        follower?.shutdown()
    }

    /// Undoes `stop` when a demotion is abandoned: the run, its backlog and tap positions stay.
    func resume() {
        state.update { s in
            s.stopping = false
            s.tapsClosed = false
        }
    }

    var snapshot: KeeperStatus {
        state.withLock { s in
            KeeperStatus(runID: String(runID, radix: 16), endOffset: s.backlog.lastOffset, backlogFirstOffset: s.backlog.firstOffset,
                         backlogRecords: s.backlog.count, backlogBytes: s.backlog.bytes, backlogLimitBytes: s.backlog.limitBytes,
                         tapsConnected: s.tapLinks.count, followerConnected: s.followerConnection != nil,
                         followerAddress: s.followerAddress, followerApplied: s.followerApplied, followerInSync: s.followerInSync,
                         counters: s.counters)
        }
    }

    // MARK: taps

    /// Serves one authenticated tap connection until it closes.
    func serveTap(_ ch: JournalChannel) {
        let tapID: BytesKey
        let wantsApplied: Bool
        do {
            guard case .tapStart(let id, let wants) = try ch.receive() else { return }
            (tapID, wantsApplied) = (BytesKey(id), wants)
            let acked = state.withLock { $0.taps[tapID]?.lastSeq ?? 0 }
            try ch.send(.tapWelcome(runID: runID, ackedSeq: acked))
            try ch.stream.socket.setIOTimeout(milliseconds: 0)
        } catch {
            Log.warning("keeper", "tap \(ch.peer): \(error)")
            return
        }
        let link = TapLink(ch, tapID: tapID, wantsApplied: wantsApplied)
        let closed = state.update { s -> Bool in
            if !s.tapsClosed { s.tapLinks[ObjectIdentifier(link)] = link }
            return s.tapsClosed
        }
        if closed { return }
        defer { state.update { $0.tapLinks[ObjectIdentifier(link)] = nil } }
        let linkClosed = Monitor(false)
        Threads.start("keeper-tap-writer") { [self] in tapWriter(link, closed: linkClosed) }
        defer {
            linkClosed.update { $0 = true }
            state.update { _ in }
        }
        while true {
            let m: Message
            do { m = try ch.receive() } catch {
                if case .stream(.closed) = error {} else { Log.warning("keeper", "tap \(ch.peer): \(error)") }
                return
            }
            switch m {
            case .records(let recs): journal(recs, from: link)
            case .tapGap(let from, let lost): journalGap(tapID: tapID, from: from, lost: lost, reason: "tap reported buffer overflow")
            default:
                Log.warning("keeper", "tap \(ch.peer) sent an unexpected message; closing")
                return
            }
        }
    }

    func journal(_ recs: [TapRecord], from tapLink: TapLink) {
        let tapID = tapLink.tapID
        let stamp = Clock.wallNanos()
        let now = Clock.monoNanos()
        let (link, ackDue) = state.update(signalling: { s -> ((FollowerLink?, Bool), wake: Bool) in
            // A keeper handing over journals nothing more: unacknowledged, the records go to
            // the next keeper when the tap reconnects.
            guard !s.tapsClosed else { return ((nil, false), false) }
            // Taken out of the dictionary so it is uniquely referenced: appending to `marks`
            // in a copy would copy the whole array on every batch.
            var tap = s.taps.removeValue(forKey: tapID) ?? TapState()
            for r in recs {
                if r.seq <= tap.lastSeq { continue }  // resent after a reconnect: already journaled
                if tap.lastSeq > 0 && r.seq > tap.lastSeq + 1 {
                    let lost = r.seq - tap.lastSeq - 1
                    appendGap(&s, reason: "tap sequence jumped from \(tap.lastSeq) to \(r.seq) (\(lost) records lost)")
                }
                s.backlog.append(r.op, key: r.key, stamp: stamp)
                s.counters.records += 1
                tap.lastSeq = r.seq
            }
            tap.marks.append((s.backlog.lastOffset, tap.lastSeq))
            if tap.marks.count > 4096 { tap.marks.removeFirst(2048) }
            let ackDue = now - tap.lastAckWake >= UInt64(tapLink.ackCoalesceMs) * 1_000_000
            if ackDue { tap.lastAckWake = now }
            s.taps[tapID] = tap
            return ((s.followerLink, ackDue), false)
        })
        // The follower gets the records from this thread when its link is free: waking the
        // streamer would add a context switch to every record's way to the passive. If the
        // link is busy, the socket full or the follower behind, the streamer takes over.
        var streamed = true
        if let link {
            var behind = false
            streamed = link.ch.sendNow(encoding: { out in
                if state.withLock({ streamNews(link, &$0, into: &out) }) == nil { behind = true }
            }) && !behind
        }
        if !streamed || ackDue { state.update { _ in } }
    }

    /// Appends the next stream frame for the follower to `out`: true if there was news,
    /// false if nothing is new, nil when the follower fell behind the backlog. Call under the
    /// link's send lock.
    func streamNews(_ link: FollowerLink, _ s: inout State, into out: inout [UInt8]) -> Bool? {
        guard s.followerID == link.id, !s.stopping else { return false }
        let cursor = link.cursor.load(ordering: .relaxed)
        guard let next = s.backlog.appendStreamFrame(from: cursor, max: 4096, to: &out) else { return nil }
        guard next > cursor else { return false }
        link.cursor.store(next, ordering: .relaxed)
        return true
    }

    func journalGap(tapID: BytesKey, from: UInt64, lost: UInt64, reason: String) {
        state.update { s in
            // As with records (see `journal`): unacknowledged, the tap reports the gap again
            // to the next keeper. Journaled here it would put a full sync in the way of the
            // follower the hand-over is waiting for.
            guard !s.tapsClosed else { return }
            var tap = s.taps[tapID] ?? TapState()
            let last = from + lost - 1
            if last > tap.lastSeq {
                appendGap(&s, reason: "\(reason): \(lost) records from seq \(from)")
                tap.lastSeq = last
            }
            s.taps[tapID] = tap
        }
    }

    private func appendGap(_ s: inout State, reason: String) {
        s.backlog.append(.gap, key: [], stamp: Clock.wallNanos())
        s.counters.gaps += 1
        Log.warning("keeper", "journal gap at offset \(s.backlog.lastOffset): \(reason); the follower will resync")
    }

    /// Sends acks, applied seqs and follower sync state to one tap as they change, and the sync
    /// state again every ``JournalTiming/keepaliveMs`` as a keepalive: the tap takes silence
    /// for a dead keeper (see ``JournalTiming``). Applied seqs usually go out from the
    /// follower-ack thread (see `relayApplied`); this sends what that thread could not.
    func tapWriter(_ link: TapLink, closed: Monitor<Bool>) {
        let (ch, tapID) = (link.ch, link.tapID)
        var sentAck: UInt64 = 0
        var sentSync: Bool?
        var lastKeepalive: UInt64 = 0
        let keepaliveNanos = UInt64(JournalTiming.keepaliveMs) * 1_000_000
        let urgent = { (s: State) in
            s.stopping || link.hasAppliedNews(s.taps[tapID]?.appliedSeq ?? 0)
                || s.followerInSync != sentSync || ch.hasLeftover
        }
        while !closed.withLock({ $0 }) {
            var stop = state.wait(until: { s in urgent(s) || (s.taps[tapID]?.lastSeq ?? 0) != sentAck },
                                  timeoutMs: JournalTiming.keepaliveMs) { s, _ in s.stopping }
            if !stop && !state.withLock({ urgent($0) }) {
                // Only the journaled seq moved: acks just let the tap free its buffer, so
                // coalesce them (`TapLink.ackCoalesceMs`) rather than answer every batch with
                // a wake-up and a write. An applied seq (a sync-mode client is waiting on it)
                // or a sync state change ends the wait at once.
                stop = state.wait(until: urgent, timeoutMs: link.ackCoalesceMs) { s, _ in s.stopping }
            }
            if stop { ch.stream.socket.shutdown(); return }
            do {
                try ch.send {
                    let (ack, applied, inSync) = state.withLock { s in
                        (s.taps[tapID]?.lastSeq ?? 0, s.taps[tapID]?.appliedSeq ?? 0, s.followerInSync)
                    }
                    var out: [Message] = []
                    let now = Clock.monoNanos()
                    if inSync != sentSync || now - lastKeepalive >= keepaliveNanos {
                        out.append(.syncState(followerInSync: inSync))
                        lastKeepalive = now
                    }
                    if ack != sentAck { out.append(.tapAck(seq: ack)) }
                    out += link.appliedNews(applied)
                    (sentAck, sentSync) = (ack, inSync)
                    return out
                }
            } catch {
                ch.stream.socket.shutdown()
                return
            }
        }
    }

    // MARK: follower

    /// Serves the follower: partial resync from the backlog when it can, otherwise tells it to
    /// full sync and streams from the current end while it does.
    func serveFollower(_ ch: JournalChannel) {
        let startOffset: UInt64
        let id: Int
        do {
            guard case .follow(let theirRun, let applied, let theirEpoch) = try ch.receive() else { return }
            if theirEpoch > epoch {
                try? ch.send(.refused(reason: "follower has seen epoch \(theirEpoch), newer than this keeper's \(epoch)"))
                Log.warning("keeper", "refusing follower \(ch.peer): it has seen epoch \(theirEpoch) > ours \(epoch); stepping down")
                onHigherEpoch(theirEpoch)
                return
            }
            let (reply, from, newID, old) = state.update { s -> (Message, UInt64, Int, Socket?) in
                let old = s.followerConnection
                s.followerID += 1
                s.followerConnection = ch.stream.socket
                s.followerAddress = ch.stream.socket.remoteAddress
                s.followerLastAck = Clock.monoNanos()
                s.followerInSync = false
                let ours = theirRun == runID || Lineage(runID: theirRun, offset: applied) == lineage
                if ours && s.backlog.covers(applied + 1) {
                    s.counters.partialResyncs += 1
                    s.followerApplied = applied
                    return (.resume(runID: runID, from: applied + 1), applied + 1, s.followerID, old)
                }
                s.counters.fullResyncs += 1
                s.followerApplied = 0
                return (.fullSync(runID: runID, from: s.backlog.nextOffset), s.backlog.nextOffset, s.followerID, old)
            }
            old?.shutdown()
            try ch.send(reply)
            try ch.stream.socket.setIOTimeout(milliseconds: 0)
            startOffset = from
            id = newID
            if case .resume = reply {
                Log.info("keeper", "follower \(ch.stream.socket.remoteAddress) resumes from offset \(from) (partial resync)")
            } else {
                Log.info("keeper", "follower \(ch.stream.socket.remoteAddress) needs a full sync (its run \(String(theirRun, radix: 16)), offset \(applied)); streaming from \(from)")
            }
        } catch {
            Log.warning("keeper", "follower \(ch.peer): \(error)")
            return
        }
        let link = FollowerLink(ch, id: id, from: startOffset)
        state.update { s in if s.followerID == id { s.followerLink = link } }
        Threads.start("keeper-follower-acks") { [self] in readFollowerAcks(ch, id: id) }
        streamToFollower(link)
        ch.stream.socket.shutdown()
        state.update { s in
            if s.followerID == id {
                s.followerConnection = nil
                s.followerLink = nil
                s.followerInSync = false
            }
        }
    }

    /// Streams what the journaling threads could not send themselves (see `journal`), pings
    /// an idle follower, and drops one that has gone silent or fell behind the backlog.
    func streamToFollower(_ link: FollowerLink) {
        let (ch, id) = (link.ch, link.id)
        var lastSend = Clock.monoNanos()
        while true {
            let live = state.wait(until: { s in
                s.stopping || s.followerID != id || s.backlog.nextOffset > link.cursor.load(ordering: .relaxed) || ch.hasLeftover
            }, timeoutMs: 250) { s, _ in !s.stopping && s.followerID == id }
            guard live else { return }
            // Read the ack time first: the ack thread may move it past a `now` taken earlier.
            let lastAck = state.withLock { $0.followerLastAck }
            let now = Clock.monoNanos()
            let silentMs = now > lastAck ? (now - lastAck) / 1_000_000 : 0
            if silentMs > JournalTiming.followerSilenceLimitMs {
                Log.warning("keeper", "follower \(ch.stream.socket.remoteAddress) silent for \(silentMs) ms; dropping it (sync taps degrade now)")
                return
            }
            var behind = false
            do {
                try ch.send(encoding: { out in
                    let sent = state.withLock { s -> Bool? in
                        guard let news = streamNews(link, &s, into: &out) else { return nil }
                        if !news && Clock.monoNanos() - lastSend > 200_000_000 {
                            Message.ping(endOffset: s.backlog.lastOffset, stampNanos: Clock.wallNanos()).frame(into: &out)
                            return true
                        }
                        return news
                    }
                    guard let sent else { behind = true; return }
                    if sent { lastSend = Clock.monoNanos() }
                })
            } catch {
                Log.warning("keeper", "follower \(ch.peer): \(error)")
                return
            }
            if behind {
                Log.warning("keeper", "follower \(ch.peer) fell behind the backlog (needs offset \(link.cursor.load(ordering: .relaxed))); disconnecting it so it resyncs")
                return
            }
        }
    }

    /// Reads the follower's acks: it acks at least every 300 ms, so its silence is noticed
    /// (`streamToFollower`), and each applied offset becomes an applied seq per tap.
    func readFollowerAcks(_ ch: JournalChannel, id: Int) {
        while true {
            let m = try? ch.receive()
            if case .followerAlive? = m {
                state.withLock { s in if s.followerID == id { s.followerLastAck = Clock.monoNanos() } }
                continue
            }
            guard case .followerAck(let applied)? = m else {
                ch.stream.socket.shutdown()
                return
            }
            let news = state.update(signalling: { s -> ([(TapLink, UInt64)], wake: Bool) in
                guard s.followerID == id else { return ([], false) }
                s.followerLastAck = Clock.monoNanos()
                s.followerApplied = max(s.followerApplied, applied)
                let becameInSync = !s.followerInSync
                s.followerInSync = true
                for tid in Array(s.taps.keys) {
                    var t = s.taps.removeValue(forKey: tid)!  // unique, so edits do not copy
                    var drop = 0
                    for m in t.marks {
                        if m.offset <= s.followerApplied { t.appliedSeq = max(t.appliedSeq, m.seq); drop += 1 } else { break }
                    }
                    if drop > 0 { t.marks.removeFirst(drop) }
                    s.taps[tid] = t
                }
                let news = s.tapLinks.values.compactMap { link -> (TapLink, UInt64)? in
                    guard let a = s.taps[link.tapID]?.appliedSeq, link.hasAppliedNews(a) else { return nil }
                    return (link, a)
                }
                return (news, becameInSync || s.tapsClosed)
            })
            relayApplied(news)
        }
    }

    /// Sends each tap its new applied seq from this thread: sync writes are waiting on it.
    /// What cannot go at once (the tap's writer is sending, or its socket is full) is left to
    /// the tap's writer thread, woken for it.
    func relayApplied(_ news: [(TapLink, UInt64)]) {
        var handOff = false
        for (link, applied) in news where !link.ch.sendNow({ link.appliedNews(applied) }) {
            handOff = true
        }
        if handOff { state.update { _ in } }
    }
}
