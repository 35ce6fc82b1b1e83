import JournalWire
import UnderstudyPosix

/// The keeper's side of its follower: the handshake that picks a partial or a full resync,
/// the stream, and the follower's acks, which become applied seqs for sync taps.
extension Keeper {
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
