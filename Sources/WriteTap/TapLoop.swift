import Synchronization
import UnderstudyPosix

/// One thread multiplexing many tap clients with epoll.
///
/// A thread per client costs two sleeps and two wake-ups per request (the client read, the
/// memcached read); on a busy 2-core machine that scheduling was a fifth of the tap's CPU.
/// A loop that finds several connections ready handles them all in one wake-up, as
/// twemproxy and memcached itself do.
///
/// `@unchecked Sendable`: the connection table and everything in it belong to the loop's
/// thread. Other threads only `adopt` (through the locked inbox) and `stop`/`wake`.
///
/// For the same reason the stored collections of the loop and of what it owns (connections,
/// sessions, upstreams, buffers) are `@exclusivity(unchecked)`. Swift checks each access to
/// a class's stored property at run time (a thread-local lookup and a set insert) unless it
/// can prove it safe; under callgrind that was 17% of the tap's instructions per proxied set,
/// and dropping it cut the tap's CPU per set by 8% (15.0 → 13.9 µs at 4 connections).
/// One thread can still overlap two accesses by reentrancy; no session callback reaches
/// back into the collection it is called from.
final class TapLoop: @unchecked Sendable {
    let poller: Poller
    let context: TapContext
    let name: String
    private let inbox = Mutex<[Socket]>([])
    private let stopping = Atomic<Bool>(false)
    private let stopped = Monitor<Bool>(false)

    // Loop-owned: `@exclusivity(unchecked)`, see above.
    @exclusivity(unchecked) private var connections: [UInt64: TapConnection] = [:]
    /// The loop's shared connections to memcached: text (token 1) and binary (token 3).
    private let upstreams: [Upstream]
    /// Connections with replies held for sync-mode waits.
    @exclusivity(unchecked) private var holding: Set<UInt64> = []
    private var nextHeldCheck = UInt64.max
    private var nextID: UInt64 = 1
    private var lastTimerCheck: UInt64 = 0
    /// When journal records queued by this loop are due to ship (see `TapEmitter.shipQueued`).
    private var shipDue = UInt64.max
    /// Whether to poll for memcached's reply before sleeping (see `ReplySpin`).
    private var spin: ReplySpin

    static let timerPeriodNanos: UInt64 = 100_000_000
    /// How much later than due a shipment may go while memcached owes this loop a reply.
    /// That reply's turn ships it, within a round trip, so the wait needs no near deadline of
    /// its own. Measured, not explained: with it the tap and keeper spent 38 µs of CPU per
    /// one-connection set instead of 40 (`understudy-bench tap`, 3 runs each; 35.5 against
    /// 37.5 for the loop alone in five paired runs), with timer interrupts and expiries
    /// counted the same. A loop owed no reply keeps the exact due time, so writes with pauses
    /// between them ship as promptly as before.
    static let shipSlackNanos: UInt64 = 2_000_000
    static let drainNanos: UInt64 = 2_000_000_000

    init(name: String, context: TapContext, replySpinNanos: UInt64) throws(SystemError) {
        self.name = name
        self.context = context
        spin = ReplySpin(budgetNanos: replySpinNanos)
        let poller = try Poller()
        self.poller = poller
        upstreams = [Upstream(token: 1, context: context, poller: poller), Upstream(token: 3, context: context, poller: poller)]
    }

    func start() {
        Threads.start(name) { [self] in run() }
    }

    /// Hands a new client to this loop. Any thread.
    func adopt(_ client: Socket) {
        inbox.withLock { $0.append(client) }
        poller.wake()
    }

    /// Stops reading clients, lets what is in flight finish (bounded by `drainNanos`) so
    /// that every write memcached applied is journaled, then closes every connection and
    /// waits for the thread to finish.
    func stop() {
        stopping.store(true, ordering: .releasing)
        poller.wake()
        stopped.wait(until: { $0 }, timeoutMs: 5000) { _, _ in }
    }

    private func run() {
        var events: [Poller.Event] = []
        var touched: [TapConnection] = []
        var drainUntil: UInt64?
        var turnEnd = Clock.monoNanos()
        while true {
            if drainUntil == nil && stopping.load(ordering: .acquiring) {
                drainUntil = Clock.monoNanos() + Self.drainNanos
                for c in connections.values { c.stopReading() }
                touched = Array(connections.values)
                for c in touched { settle(c) }
            }
            if let drainUntil, connections.isEmpty || Clock.monoNanos() >= drainUntil { break }
            events.removeAll(keepingCapacity: true)
            let replyOwed = upstreams.contains { $0.awaitsReply }
            if replyOwed && spin.shouldSpin() {
                spin.spun(caught: poller.poll(untilNanos: Clock.monoNanos() + spin.budget, into: &events))
            }
            do {
                // Without a spin the clock is read once per turn, after the wait: a turn
                // takes microseconds, and reading it three times was 1.4% of the tap's
                // instructions.
                if events.isEmpty { try poller.wait(timeoutNanos: timeout(now: turnEnd, replyOwed: replyOwed), into: &events) }
            } catch {
                Log.error("tap", "\(name): \(error)")
                Clock.sleep(milliseconds: 10)
                continue
            }
            touched.removeAll(keepingCapacity: true)
            var woken = false
            for e in events {
                if e.token == Poller.wakeToken {
                    woken = true
                    continue
                }
                if e.token & 1 == 1 {
                    let up = upstreams[Int(e.token >> 1)]
                    if e.writable { up.writable() }
                    if e.readable { up.readable() }
                    continue
                }
                guard let c = connections[e.token >> 1] else { continue }
                if e.readable { c.clientReadable() }
                touched.append(c)
            }
            if woken { adoptInbox(accepting: drainUntil == nil) }
            let now = Clock.monoNanos()
            // A wake-up may be the emitter reporting sync progress.
            if !holding.isEmpty && (woken || now >= nextHeldCheck) { releaseHeld(now: now, &touched) }
            if now - lastTimerCheck >= Self.timerPeriodNanos {
                lastTimerCheck = now
                for up in upstreams { up.checkTimers(now: now) }
                touched.append(contentsOf: connections.values)
            }
            // One send per upstream carries this turn's requests from every client.
            for up in upstreams {
                up.flush()
                touched.append(contentsOf: up.touched)
                up.touched.removeAll(keepingCapacity: true)
                up.updateInterest()
            }
            for c in touched { settle(c) }
            // The turn's journal records, after its replies: they cost the clients nothing.
            shipDue = context.emitter.shipQueued(now: now) ?? .max
            turnEnd = now
        }
        _ = context.emitter.shipQueued(now: Clock.monoNanos(), force: true)
        for c in connections.values { c.close() }
        for up in upstreams { up.close() }
        context.sessionsEnded(connections.count)
        connections.removeAll()
        adoptInbox(accepting: false)
        stopped.update { $0 = true }
    }

    /// Until the next timer or ticket deadline; nil: until an event.
    private func timeout(now: UInt64, replyOwed: Bool) -> UInt64? {
        if connections.isEmpty && shipDue == .max { return nil }
        let ship = shipDue == .max || !replyOwed ? shipDue : shipDue + Self.shipSlackNanos
        var until = min(lastTimerCheck + Self.timerPeriodNanos, ship)
        if !holding.isEmpty { until = min(until, nextHeldCheck) }
        return until - min(until, now)
    }

    private func adoptInbox(accepting: Bool) {
        for s in inbox.withLock({ q -> [Socket] in defer { q.removeAll() }; return q }) {
            guard accepting else {
                s.close()
                context.sessionsEnded(1)
                continue
            }
            let id = nextID
            nextID += 1
            do {
                connections[id] = try TapConnection(id: id, client: s, context: context, poller: poller,
                                                    text: upstreams[0], binary: upstreams[1])
            } catch {
                Log.error("tap", "\(name): cannot watch a new client: \(error)")
                s.close()
                context.sessionsEnded(1)
            }
        }
    }

    private func releaseHeld(now: UInt64, _ touched: inout [TapConnection]) {
        nextHeldCheck = .max
        for id in holding {
            guard let c = connections[id] else {
                holding.remove(id)
                continue
            }
            if let next = c.replies.release(context.emitter, now: now) {
                nextHeldCheck = min(nextHeldCheck, next)
            } else {
                holding.remove(id)
            }
            touched.append(c)
        }
    }

    /// After a connection's events: send what it produced, then close it or update its interest.
    private func settle(_ c: TapConnection) {
        c.flushClient()
        if c.replies.isHolding && !holding.contains(c.id) {
            holding.insert(c.id)
            // A fresh wait may be due before the current earliest.
            nextHeldCheck = min(nextHeldCheck, c.replies.release(context.emitter, now: Clock.monoNanos()) ?? .max)
            c.flushClient()
        }
        // Listed twice in one turn, and closed the first time.
        guard !c.isClosed else { return }
        if c.isFinished {
            c.close()
            connections[c.id] = nil
            holding.remove(c.id)
            context.sessionsEnded(1)
        } else {
            c.updateInterest()
        }
    }
}
