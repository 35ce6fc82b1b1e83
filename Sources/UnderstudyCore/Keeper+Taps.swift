import JournalWire
import UnderstudyPosix

/// The keeper's side of its taps: their records into the journal, their gaps, and what
/// each is told back (acks, applied seqs, the follower's sync state).
extension Keeper {
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
}
