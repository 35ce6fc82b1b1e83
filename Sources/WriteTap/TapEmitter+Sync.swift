import JournalWire
import UnderstudyPosix

/// Sync and strict modes: a write waits for the follower to apply its record, and the
/// policy decides what the client hears when it did not.
extension TapEmitter {
    public enum SyncOutcome: Equatable, Sendable {
        case applied
        /// Timed out or no in-sync follower: the write stands on the active only.
        case notApplied(String)
        /// The keeper connection was lost while the write waited. The keeper and the
        /// memcached that acknowledged the write may have died together (a node crash), so
        /// the write may exist nowhere: it must not be acknowledged as if it stood.
        case keeperLost(String)
    }

    /// A sync write's claim on the follower: the record it waits for, and the clock it waits
    /// by. Blocking clients wait on it with `awaitApplied`; the proxy's event loops, which
    /// cannot block, ask `settle` whenever the emitter reports progress or a deadline passes.
    public struct SyncTicket: Sendable {
        public let seq: UInt64
        /// Past this the write may degrade, given proof that the keeper lives.
        let deadline: UInt64
        /// Past this, silence counts as the keeper's death.
        let giveUp: UInt64

        /// When to look again if nothing reports progress first.
        public func nextCheck(now: UInt64) -> UInt64 { now < deadline ? deadline : giveUp }
    }

    /// The ticket for a record just emitted; nil in async mode, where nobody waits.
    public func ticket(for seq: UInt64) -> SyncTicket? {
        guard mode != .async else { return nil }
        let deadline = Clock.monoNanos() + UInt64(max(options.syncTimeoutMs, 0)) * 1_000_000
        return SyncTicket(seq: seq, deadline: deadline, giveUp: deadline + UInt64(JournalTiming.silenceLimitMs + JournalTiming.keepaliveMs) * 1_000_000)
    }

    /// Blocks until the follower has applied record `seq`, or the sync timeout passes, or the
    /// keeper says no follower is in sync, or the keeper connection drops (then at once:
    /// waiting cannot help).
    ///
    /// A timeout alone does not let a sync write degrade: the keeper may have died with the
    /// memcached that stored the write and its link (a node crash sends no FIN), and then the
    /// write exists nowhere. So past the deadline the tap waits for proof that the keeper is
    /// alive — any frame heard after the deadline, at most a keepalive away — and only then
    /// degrades; silence until the connection is declared lost refuses the write instead.
    public func awaitApplied(_ seq: UInt64) -> SyncOutcome {
        let t = ticket(for: seq) ?? SyncTicket(seq: seq, deadline: 0, giveUp: 0)
        // Two waits because crossing the deadline is no event: the second re-evaluates then.
        state.wait(until: { decided($0, t, now: Clock.monoNanos()) }, timeoutMs: options.syncTimeoutMs) { _, _ in }
        let rest = Int((t.giveUp - min(t.giveUp, Clock.monoNanos())) / 1_000_000) + 1
        return state.wait(until: { decided($0, t, now: Clock.monoNanos()) }, timeoutMs: rest) { s, _ in outcome(&s, t) }
    }

    /// The outcome if it is known by `now`, else nil (keep waiting). Counts it once known.
    public func settle(_ t: SyncTicket, now: UInt64) -> SyncOutcome? {
        state.withLock { s in decided(s, t, now: now) ? outcome(&s, t) : nil }
    }

    private func decided(_ s: State, _ t: SyncTicket, now: UInt64) -> Bool {
        if s.applied >= t.seq || s.stopping || (s.connected && !s.followerInSync) || s.lastDisconnectSeq >= t.seq { return true }
        return now >= t.giveUp || (now >= t.deadline && (!s.connected || s.lastHeard > t.deadline))
    }

    private func outcome(_ s: inout State, _ t: SyncTicket) -> SyncOutcome {
        if s.applied >= t.seq {
            s.counters.syncApplied += 1
            return .applied
        }
        if s.lastDisconnectSeq >= t.seq {
            s.counters.syncFailed += 1
            return .keeperLost("journal keeper connection lost before the follower applied the write: \(s.lastError)")
        }
        if s.connected && s.followerInSync && s.lastHeard <= t.deadline && !s.stopping {
            s.counters.syncFailed += 1
            let now = Clock.monoNanos()
            let silentMs = (now - min(s.lastHeard, now)) / 1_000_000
            return .keeperLost("journal keeper silent for \(silentMs) ms while the write waited")
        }
        if options.mode == .strict { s.counters.syncFailed += 1 } else { s.counters.syncDegraded += 1 }
        if !s.connected { return .notApplied("journal keeper unreachable: \(s.lastError)") }
        if !s.followerInSync { return .notApplied("no in-sync follower") }
        return .notApplied("follower did not apply within \(options.syncTimeoutMs) ms")
    }

    /// Registers a callback run (on the emitter's threads) whenever something a sync waiter
    /// waits for changed: an applied seq, the sync state, the keeper connection. Event loops
    /// use it to wake and `settle` their tickets.
    public func onSyncProgress(_ notify: @escaping @Sendable () -> Void) {
        syncWatchers.withLock { $0.append(notify) }
    }

    func notifySyncWatchers() {
        guard mode != .async else { return }
        for notify in syncWatchers.withLock({ $0 }) { notify() }
    }

    /// The sync policy, for every form of the tap: nil when the client may be answered, else
    /// why it must be refused. Async never waits; sync degrades to async when the follower is
    /// slow or absent (counted); strict refuses then; both refuse when the keeper vanished
    /// under a waiting write.
    public func syncRefusal(_ seq: UInt64) -> String? {
        guard mode != .async else { return nil }
        return refusal(awaitApplied(seq))
    }

    /// Why the policy refuses a write with this outcome, or nil if the client may be answered.
    public func refusal(_ outcome: SyncOutcome) -> String? {
        switch outcome {
        case .applied: return nil
        case .notApplied(let why): return mode == .strict ? why : nil
        case .keeperLost(let why): return why
        }
    }
}
