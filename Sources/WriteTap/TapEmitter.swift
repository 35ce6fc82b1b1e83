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
    let syncWatchers = Mutex<[@Sendable () -> Void]>([])

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
}
