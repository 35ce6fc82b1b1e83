import JournalWire
import MemcacheClient
import MemcacheProtocol
import UnderstudyPosix

/// Streaming: connect and resume, read the journal into the queue, apply it in order, ack.
extension Follower {
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
    ///
    /// A frame that arrives while the applier sleeps, with nothing queued or buffered behind
    /// it, is applied here instead: handing it over was a futex wake-up and a context switch
    /// on every record's way to the passive (10 µs of the lag at 5k writes/s, measured in
    /// the lag breakdown), and the applier had nothing else to do. When frames come faster
    /// than that, they queue and the applier takes them in batches as before, with the reader
    /// reading on in parallel. Flush and gap records always go through the applier: a gap
    /// starts a full sync, during which this thread must keep reading.
    func readStream(_ ch: JournalChannel, copier: CopierLoan) {
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
                let applyHere = state.update(signalling: { s -> (Bool, wake: Bool) in
                    if let last = recs.last {
                        s.received = last.offset
                        s.keeperEnd = max(s.keeperEnd, last.offset)
                    }
                    // `channel === ch`: a reader outliving its link (a frame still buffered
                    // after the close) must not use the copier under the next link's applier.
                    if s.applierIdle && s.channel === ch && s.pending == 0 && s.copyValid && s.fullSyncReason == nil && !s.draining && !s.stopping
                        && !ch.hasBufferedFrame && recs.allSatisfy(\.op.isKeyChange) {
                        s.readerApplying = true
                        return (true, false)
                    }
                    let wasEmpty = s.pending == 0
                    s.queue.append(contentsOf: recs)
                    return (false, wasEmpty)
                })
                if applyHere { applyOnReader(recs, copier: copier.copier) }
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

    /// Applies a frame on the reader's thread (see `readStream`). A failure hands the
    /// records to the applier, which meets it again and handles it as it handles its own:
    /// applying twice is harmless, skipping is not.
    private func applyOnReader(_ recs: [StreamRecord], copier: KeyCopier) {
        var failed = false
        do { try apply(recs, copier: copier) } catch { failed = true }
        state.update(signalling: { s in
            if failed { s.queue.append(contentsOf: recs) }
            s.readerApplying = false
            return ((), failed || s.applierWaiting)
        })
    }

    /// Takes the copier back from the reader, waiting out an apply it is in.
    func reclaimCopier() {
        state.withLock { s in
            s.applierIdle = false
            s.applierWaiting = s.readerApplying
        }
        state.wait(until: { !$0.readerApplying }, timeoutMs: nil) { s, _ in s.applierWaiting = false }
    }

    func follow(_ ch: JournalChannel, copier: KeyCopier) throws(FollowerFailure) {
        defer {
            state.withLock { s in if s.channel === ch { s.channel = nil } }
            ch.close()
            reclaimCopier()
        }
        let loan = CopierLoan(copier: copier)
        Threads.start("follower-stream") { [self] in readStream(ch, copier: loan) }
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
            state.withLock { $0.applierIdle = true }
            let (batch, live, lent) = state.wait(until: { $0.pending > 0 || !$0.connected || $0.stopping || $0.draining || $0.fullSyncReason != nil },
                                                 timeoutMs: 200) { s, _ -> ([StreamRecord], Bool, Bool) in
                s.applierIdle = false
                if s.readerApplying { return ([], s.connected, true) }
                let b = s.queue.popFirst(max: options.batchSize)
                if b.isEmpty && s.connected && s.fullSyncReason == nil { s.lagMs = 0 }
                s.markStreaming()
                return (b, s.connected, false)
            }
            // The copier is out only if the reader took it during this wait; everywhere
            // else in the loop `applierIdle` is false, so the reader cannot take it.
            if lent {
                reclaimCopier()
                continue
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
}

/// The applier's copier, lent to the stream reader while the applier sleeps. It crosses
/// threads unsynchronized because `State.readerApplying` and `State.applierIdle` make its
/// use exclusive: the reader uses it only when it set the first while the second held.
struct CopierLoan: @unchecked Sendable {
    let copier: KeyCopier
}
