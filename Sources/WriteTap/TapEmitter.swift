import JournalWire
import Synchronization
import UnderstudyPosix

/// The tap's journal sender: records go into a bounded buffer and are shipped to the keeper
/// without ever blocking the application's write path (async mode) — by a background thread
/// for the library (`emit`), by the proxy's event loops themselves between turns
/// (`emitQueued`, `shipQueued`), with the thread as their fallback. Records stay buffered
/// until the keeper acknowledges them and are re-sent after a reconnect. When the buffer
/// overflows the tap reports a gap — counted, logged and sent to the keeper, which makes the
/// follower resync — instead of dropping anything silently.
public final class TapEmitter: Sendable {
    public enum Mode: String, Sendable, CaseIterable {
        /// Answer the client as soon as memcached did.
        case async
        /// Wait for the follower to apply; on timeout or no follower, answer anyway (counted).
        case sync
        /// Wait for the follower to apply; on timeout or no follower, answer `SERVER_ERROR`.
        case strict
    }

    public struct Options: Sendable {
        public var journal: Endpoint
        public var secret: [UInt8]
        /// Unacknowledged records held before the tap declares a gap.
        public var capacity: Int
        public var mode: Mode
        public var syncTimeoutMs: Int

        public init(journal: Endpoint, secret: [UInt8] = [], capacity: Int = 1 << 20, mode: Mode = .async, syncTimeoutMs: Int = 1000) {
            self.journal = journal
            self.secret = secret
            self.capacity = capacity
            self.mode = mode
            self.syncTimeoutMs = syncTimeoutMs
        }
    }

    public struct Counters: Sendable, Equatable {
        public var emitted: UInt64 = 0
        public var acked: UInt64 = 0
        /// Records discarded because the buffer overflowed; each overflow is also a reported gap.
        public var overflowed: UInt64 = 0
        public var gaps: UInt64 = 0
        public var reconnects: UInt64 = 0
        public var syncApplied: UInt64 = 0
        public var syncDegraded: UInt64 = 0
        public var syncFailed: UInt64 = 0
    }

    struct PendingGap {
        var fromSeq: UInt64
        var lost: UInt64
        var lastSeq: UInt64 { fromSeq + lost - 1 }
    }

    struct State {
        /// Records not yet acknowledged, oldest first, with consecutive seqs (an overflow
        /// empties it). Chunked: see `ChunkedQueue`.
        var pending = ChunkedQueue<TapRecord>()
        var nextSeq: UInt64 = 1
        var acked: UInt64 = 0
        var sentUpTo: UInt64 = 0
        var gap: PendingGap?
        var gapSent = false
        var applied: UInt64 = 0
        var followerInSync = false
        var connected = false
        /// The highest seq emitted when the keeper connection was last lost. A sync write at or
        /// below it was waiting on a keeper that vanished: see ``syncRefusal(_:)``.
        var lastDisconnectSeq: UInt64 = 0
        /// When the keeper was last heard from (monotonic ns); it speaks at least every
        /// ``JournalTiming/keepaliveMs``.
        var lastHeard: UInt64 = 0
        var stopping = false
        var channel: JournalChannel?
        var counters = Counters()
        /// The sender is (about to be) asleep waiting for records: only then does `emit`
        /// need to wake it.
        var senderIdle = false
        /// Records wait for the sender thread: the blocking `emit` path, a resend after a
        /// reconnect, or a loop that could not ship (`shipQueued`). Records an event loop
        /// queued are its own to ship, and do not keep the sender busy.
        var senderWanted = false
        /// The pace of async shipments, whoever ships (see ``ShipPacer``).
        var pacer = ShipPacer(TapEmitter.shipModeration, burst: TapEmitter.shipBurst)
        var lastError = ""

        var unacked: Int { pending.count }

        /// When records queued at `now` may go to the keeper (monotonic ns). Async records
        /// follow the pacer, so a busy tap sends batches; nobody waits on them. Sync writers
        /// do, so theirs are due at once. The loops and the sender thread both follow this,
        /// so the keeper sees one pace whoever ships.
        func shipDue(now: UInt64, async: Bool) -> UInt64 {
            async ? pacer.due(now: now) : now
        }
        /// How many buffered records have a seq at or below `seq`: found by arithmetic, as
        /// their seqs are consecutive, not by walking them (a keeper that stopped
        /// acknowledging would make every batch walk all it had not acknowledged). Clamped,
        /// so a keeper's wild ack cannot trap.
        func countThrough(_ seq: UInt64) -> Int {
            guard let first = pending.first?.seq, seq >= first else { return 0 }
            return seq - first >= UInt64(pending.count) ? pending.count : Int(seq - first + 1)
        }

        /// Records buffered but not yet sent on this connection.
        var hasUnsent: Bool { (pending.last?.seq ?? 0) > sentUpTo }

        /// The keeper connection is gone: a sync write waiting on it now is refused
        /// (`lastDisconnectSeq`), and nothing is known of the follower.
        mutating func markDisconnected(_ why: String) {
            if connected { lastDisconnectSeq = nextSeq - 1 }
            connected = false
            followerInSync = false
            lastError = why
        }

        mutating func trim(upTo seq: UInt64) {
            if seq > acked {
                counters.acked += seq - acked
                acked = seq
            }
            pending.removeFirst(countThrough(acked))
            if let g = gap, g.lastSeq <= acked { gap = nil }
        }
    }

    public let options: Options
    /// Identifies this tap to the keeper across reconnects, so the keeper can say what it has.
    public let tapID: [UInt8]
    let state: Monitor<State>
    /// Records an event loop queued may be unsent. Set and cleared under the state lock, read
    /// without it: a loop turn that journaled nothing (every get) skips the lock. A stale
    /// false only means another loop queued records, and that loop ships them itself.
    private let loopRecordsUnsent = Atomic<Bool>(false)
    private let syncWatchers = Mutex<[@Sendable () -> Void]>([])

    public init(_ options: Options) {
        self.options = options
        self.tapID = Handshake.nonce().prefix(16).map { $0 }
        self.state = Monitor(State())
        Threads.start("tap-sender") { [self] in senderLoop() }
    }

    public var mode: Mode { options.mode }
    public var counters: Counters { state.withLock { $0.counters } }
    public var isConnected: Bool { state.withLock { $0.connected } }
    public var lastSeq: UInt64 { state.withLock { $0.nextSeq - 1 } }
    public var ackedSeq: UInt64 { state.withLock { $0.acked } }

    /// Queues a record for a write memcached has already acknowledged (Invariant 1). Never
    /// blocks on the network. Returns the record's tap sequence number.
    @discardableResult
    public func emit(_ op: RecordOp, key: [UInt8]) -> UInt64 {
        let sendsItself = options.mode != .async
        let (seq, channel, overflowed) = state.update(signalling: { s -> ((UInt64, JournalChannel?, ChunkedQueue<TapRecord>?), wake: Bool) in
            let (seq, overflowed) = emitLocked(&s, op, key)
            if !sendsItself { s.senderWanted = true }
            return ((seq, sendsItself ? s.channel : nil, overflowed), !sendsItself && s.senderIdle)
        })
        release(overflowed)
        // A sync writer is about to wait for this record anyway: it sends it itself rather
        // than wait for the sender thread to be scheduled. If it cannot (another thread is
        // sending, or the socket is full), the sender takes over.
        if let channel { ship(channel) }
        return seq
    }

    /// Queues a record and wakes nobody: for an event loop, which calls `shipQueued` after
    /// each turn, once it has answered its clients.
    @discardableResult
    public func emitQueued(_ op: RecordOp, key: [UInt8]) -> UInt64 {
        let (seq, overflowed) = state.withLock { s in
            loopRecordsUnsent.store(true, ordering: .relaxed)
            return emitLocked(&s, op, key)
        }
        release(overflowed)
        return seq
    }

    /// Frees the records an overflow discarded, outside the lock. There are up to `capacity`
    /// of them (a million by default: 37 ms to free in a debug build); freed under the lock,
    /// they stalled every other loop and the sender too. The thread that overflowed still
    /// pays, once.
    private func release(_ discarded: consuming ChunkedQueue<TapRecord>?) {
        _ = consume discarded
    }

    /// Sends what `emitQueued` left, from the calling thread, when it is due (`State.shipDue`);
    /// returns when to call again (monotonic ns), nil when nothing waits. The loop ships
    /// itself because a wake-up of the sender per batch was a context switch and two futex
    /// calls on a saturated machine. If the channel is busy or full, the sender takes over.
    public func shipQueued(now: UInt64, force: Bool = false) -> UInt64? {
        guard force || loopRecordsUnsent.load(ordering: .relaxed) else { return nil }
        let (channel, due) = state.withLock { s -> (JournalChannel?, UInt64?) in
            guard s.hasUnsent || (s.gap != nil && !s.gapSent) else {
                loopRecordsUnsent.store(false, ordering: .relaxed)
                return (nil, nil)
            }
            // Disconnected: the sender resends everything after the reconnect.
            guard let ch = s.channel else { return (nil, nil) }
            let due = s.shipDue(now: now, async: options.mode == .async)
            return force || due <= now ? (ch, nil) : (nil, due)
        }
        if let channel { ship(channel) }
        return due
    }

    private func ship(_ channel: JournalChannel) {
        if !channel.sendNow(encoding: { out in state.withLock { _ = takeBatch(&$0, into: &out) } }) {
            state.update { $0.senderWanted = true }
        }
    }

    /// Returns the record's seq and, after an overflow, the records it discarded, for the
    /// caller to free once it has let go of the lock (`release`).
    private func emitLocked(_ s: inout State, _ op: RecordOp, _ key: [UInt8]) -> (UInt64, ChunkedQueue<TapRecord>?) {
        let seq = s.nextSeq
        s.nextSeq += 1
        s.counters.emitted += 1
        if s.unacked >= options.capacity {
            // Everything not yet acknowledged will be covered by the follower's resync;
            // keep one gap that spans it all, and start buffering afresh after it.
            let from = s.gap?.fromSeq ?? s.pending.first?.seq ?? seq
            let lost = seq - from + 1
            if s.gap == nil { s.counters.gaps += 1 }
            s.counters.overflowed += UInt64(s.unacked) + 1
            s.gap = PendingGap(fromSeq: from, lost: lost)
            s.gapSent = false
            let discarded = s.pending
            s.pending = ChunkedQueue()
            Log.warning("tap", "journal buffer full (\(options.capacity) records): reporting a gap of \(lost) records from seq \(from); the follower will resync")
            return (seq, discarded)
        }
        s.pending.append(TapRecord(seq: seq, op: op, key: key))
        return (seq, nil)
    }

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

    private func notifySyncWatchers() {
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

    /// Waits until the keeper has acknowledged everything emitted so far (or the timeout).
    public func drain(timeoutMs: Int) -> Bool {
        let target = lastSeq
        state.update { $0.senderWanted = true }  // the sender ships what is still queued
        let deadline = Clock.monoNanos() + UInt64(timeoutMs) * 1_000_000
        // Acks do not wake waiters (they matter to nobody on the hot path); poll instead.
        while Clock.monoNanos() < deadline {
            if state.wait(until: { $0.acked >= target }, timeoutMs: 20, { _, ok in ok }) { return true }
        }
        return state.withLock { $0.acked >= target }
    }

    public func stop() {
        let channel = state.update { s -> JournalChannel? in
            s.stopping = true
            return s.channel
        }
        notifySyncWatchers()
        channel?.stream.socket.shutdown()
    }

    // MARK: sender

    func senderLoop() {
        var backoffMs = 50
        var lastLogged = ""
        while !state.withLock({ $0.stopping }) {
            do throws(Handshake.Failure) {
                let (ch, _) = try Handshake.connect(options.journal, secret: options.secret, kind: .tap)
                backoffMs = 50
                lastLogged = ""
                try serve(ch)
            } catch {
                let text = error.description
                state.update { s in
                    s.markDisconnected(text)
                    s.channel = nil
                }
                notifySyncWatchers()
                if text != lastLogged {
                    Log.warning("tap", "journal \(options.journal): \(text); buffering (\(state.withLock { $0.unacked }) records)")
                    lastLogged = text
                }
            }
            if state.withLock({ $0.stopping }) { break }
            Clock.sleep(milliseconds: backoffMs)
            backoffMs = min(backoffMs * 2, 1000)
        }
    }

    /// One connection's life: welcome, resend from the keeper's last ack, then stream.
    func serve(_ ch: JournalChannel) throws(Handshake.Failure) {
        let socket = ch.stream.socket
        defer { ch.close() }
        do {
            try ch.send(.tapStart(tapID: tapID))
            guard case .tapWelcome(_, let keeperAcked) = try ch.receive() else {
                throw Handshake.Failure.channel(.journal(.unexpected("expected tap welcome")))
            }
            // The keeper speaks at least every keepalive; silence this long means it is gone
            // (see JournalTiming), and the reader then drops the connection.
            try? socket.setIOTimeout(readMs: JournalTiming.silenceLimitMs, writeMs: 0)
            state.update { s in
                s.lastHeard = Clock.monoNanos()
                s.trim(upTo: min(keeperAcked, s.nextSeq - 1))
                s.sentUpTo = s.acked
                s.gapSent = false
                s.connected = true
                s.channel = ch
                s.senderWanted = true
                s.counters.reconnects += 1
            }
            notifySyncWatchers()
            Log.info("tap", "connected to journal keeper \(options.journal)")
        } catch let e as Handshake.Failure {
            throw e
        } catch let e as JournalChannel.ReceiveError {
            throw .channel(e)
        } catch {
            throw .channel(.stream(error as! StreamError))
        }
        Threads.start("tap-acks") { [self] in readAcks(ch) }
        while true {
            state.update(signalling: { s in
                s.senderIdle = true
                return ((), false)
            })
            let live = state.wait(until: { s in
                s.stopping || !s.connected || (s.gap != nil && !s.gapSent) || (s.senderWanted && s.hasUnsent) || ch.hasLeftover
            }, timeoutMs: 1000) { s, _ -> Bool in
                s.senderIdle = false
                return !s.stopping && s.connected
            }
            guard live else { throw .channel(.stream(.closed(peer: ch.peer))) }
            // Under load, let records gather until they are due (`State.shipDue`).
            let now = Clock.monoNanos()
            let due = state.withLock { $0.shipDue(now: now, async: options.mode == .async) }
            if due > now { Clock.sleep(microseconds: Int((due - now) / 1000)) }
            do {
                try ch.send(encoding: { out in
                    state.withLock { s in
                        // A full batch means more is waiting; otherwise it all went.
                        if takeBatch(&s, into: &out) < Self.maxBatch { s.senderWanted = false }
                    }
                })
            } catch {
                throw .channel(.stream(error))
            }
        }
    }

    /// Appends the next frames for the keeper to `out`: a gap not yet reported, then up to
    /// `maxBatch` records not yet sent, encoded from the buffer in place. Returns how many
    /// records. Called under the channel's send lock, so what it takes goes out in seq order.
    func takeBatch(_ s: inout State, into out: inout [UInt8]) -> Int {
        guard !s.stopping, s.connected else { return 0 }
        if let g = s.gap, !s.gapSent {
            s.gapSent = true
            Message.tapGap(fromSeq: g.fromSeq, lost: g.lost).frame(into: &out)
        }
        let from = s.countThrough(s.sentUpTo)
        let n = min(Self.maxBatch, s.pending.count - from)
        guard n > 0 else { return 0 }
        s.sentUpTo = s.pending[from + n - 1].seq
        s.pacer.shipped(at: Clock.monoNanos(), records: n)
        Message.appendRecordsFrame(s.pending, range: from..<(from + n), to: &out)
        return n
    }

    static let maxBatch = 8192
    /// Up to 10k records/s, at most 5,000 shipments a second (200 µs apart); from 40k/s, at
    /// most 1,000 (1 ms apart), which holds the journal to some 3.5% of a core.
    static let shipModeration = ShipPacer.Moderation(lowRate: 10_000, lowInterval: 200_000, highRate: 40_000, highInterval: 1_000_000)
    static let shipBurst: UInt64 = 4

    func readAcks(_ ch: JournalChannel) {
        while true {
            do {
                let m = try ch.receive()
                if case .refused(let why) = m {
                    Log.warning("tap", "keeper refused: \(why)")
                    throw JournalChannel.ReceiveError.journal(.refused(why))
                }
                let now = Clock.monoNanos()
                // Every frame is proof the keeper lives. Only what sync writers wait on wakes
                // them: an applied seq, or the sync state, which is also the keepalive that
                // answers writes waiting for proof of life. Acks just free the buffer.
                // An ack or applied seq past what this connection sent would free, or answer,
                // records the keeper never had: a broken keeper, refused rather than believed.
                let (progressed, beyond) = state.update(signalling: { s -> ((Bool, UInt64?), wake: Bool) in
                    s.lastHeard = now
                    switch m {
                    case .tapAck(let seq):
                        guard seq <= s.sentUpTo else { return ((false, seq), false) }
                        s.trim(upTo: seq)
                        return ((false, nil), false)
                    case .tapApplied(let seq):
                        guard seq <= s.sentUpTo else { return ((false, seq), false) }
                        s.applied = max(s.applied, seq)
                        return ((true, nil), true)
                    case .syncState(let ok):
                        s.followerInSync = ok
                        return ((true, nil), true)
                    default:
                        return ((false, nil), false)
                    }
                })
                if let beyond {
                    let sent = state.withLock { $0.sentUpTo }
                    Log.warning("tap", "keeper \(ch.peer) answered seq \(beyond), beyond the last sent (\(sent)); dropping the connection")
                    throw JournalChannel.ReceiveError.journal(.unexpected("keeper answered seq \(beyond), beyond the last sent (\(sent))"))
                }
                if progressed { notifySyncWatchers() }
            } catch {
                let text = "\(error)"
                state.update { s in if s.channel === ch { s.markDisconnected(text) } }
                notifySyncWatchers()
                ch.stream.socket.shutdown()
                return
            }
        }
    }
}
