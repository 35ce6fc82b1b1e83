import JournalWire
import MemcacheProtocol
import UnderstudyPosix

/// One client of the tap and its own upstream connection to memcached, driven by an event
/// loop. Owns the sockets and buffers; the protocol session decides what the bytes mean.
///
/// Each client has one upstream connection for its life, which is what keeps per-client
/// order: its requests reach memcached on one ordered pipe, and the replies come back in
/// that order. Nothing here blocks; everything runs on the owning loop's thread.
final class TapConnection {
    let id: UInt64
    let client: Socket
    let context: TapContext
    let poller: Poller
    let clientIn = ReadBuffer()
    var replies = ReplyQueue()
    private(set) var session: (any ProxySession)?
    private var dialect = UpstreamPool.Dialect.text

    private(set) var upstream: Socket?
    private var connecting = false
    private var connectDeadline: UInt64 = 0
    let upstreamIn = ReadBuffer()
    private var upstreamOut = WriteBuffer()
    /// Since when a forwarded request has waited with no byte back from memcached.
    private var waitingSince: UInt64?

    /// The client sent its last byte (or failed): nothing more to read.
    private var clientEnded = false
    /// The client cannot take replies any more: drop them, but finish journaling.
    private var clientGone = false
    private var clientInterest: Poller.Interest = .read
    private var upstreamInterest: Poller.Interest = []

    /// Past this much output the client has not taken, neither it nor memcached's replies to
    /// it are read until it catches up.
    static let backpressureBytes = 4 << 20
    static let connectTimeoutNanos: UInt64 = 1_000_000_000

    init(id: UInt64, client: Socket, context: TapContext, poller: Poller) throws(SystemError) {
        self.id = id
        self.client = client
        self.context = context
        self.poller = poller
        Sys.setNonBlocking(client.fd, true)
        try poller.add(client.fd, token: clientToken, clientInterest)
    }

    var clientToken: UInt64 { id << 1 }
    var upstreamToken: UInt64 { id << 1 | 1 }

    // MARK: client side

    func clientReadable() {
        guard !clientEnded else { return }
        do {
            switch try clientIn.fill(from: client) {
            case .read: break
            case .wouldBlock: return
            case .endOfStream: clientEnded = true
            }
        } catch {
            clientFailed()
        }
        if session == nil {
            guard !clientIn.isEmpty else { return }
            // The first byte picks the protocol, as in memcached: 0x80 is binary.
            if clientIn.byte(at: 0) == BinaryPacket.requestMagic {
                dialect = .binary
                session = BinarySession(maxItemSize: context.itemSizeMax)
            } else {
                session = TextSession(maxItemSize: context.itemSizeMax)
            }
        }
        session?.takeRequests(self)
    }

    /// The tap is stopping: take no new requests; what is in flight still finishes.
    func stopReading() {
        clientEnded = true
    }

    func flushClient() {
        if !clientGone {
            do {
                _ = try replies.out.flushNow(to: client)
                return
            } catch {
                clientFailed()
            }
        }
        replies.out.clear()
    }

    /// The client reset or vanished. A reset socket reports a hang-up whatever the interest,
    /// so it is no longer watched while what is in flight finishes and is journaled.
    private func clientFailed() {
        clientEnded = true
        clientGone = true
        poller.remove(client.fd)
    }

    // MARK: upstream side

    /// Makes sure an upstream connection exists or is being made. Returns why not, if not.
    func ensureUpstream() -> String? {
        if upstream != nil { return nil }
        if let idle = context.pool.takeIdle(dialect) {
            adoptUpstream(idle, pending: false)
            return nil
        }
        do {
            let (s, pending) = try Socket.startConnect(to: context.memcached)
            adoptUpstream(s, pending: pending)
            return nil
        } catch {
            return "memcached \(context.memcached) unavailable: \(error)"
        }
    }

    private func adoptUpstream(_ s: Socket, pending: Bool) {
        upstream = s
        connecting = pending
        connectDeadline = Clock.monoNanos() + Self.connectTimeoutNanos
        upstreamInterest = pending ? .write : .read
        do {
            try poller.add(s.fd, token: upstreamToken, upstreamInterest)
        } catch {
            // Leave it to the next flush to fail visibly.
            Log.error("tap", "\(error)")
        }
    }

    func forward(_ bytes: [UInt8]) {
        upstreamOut.append(bytes)
        noteForwarded()
    }

    func forward(_ text: StaticString) {
        upstreamOut.append(text)
        noteForwarded()
    }

    /// Forwards the first `n` bytes of the client's input, and consumes them.
    func forwardClientBytes(_ n: Int) {
        clientIn.withBytes(0..<n) { upstreamOut.append($0) }
        clientIn.consume(n)
        noteForwarded()
    }

    private func noteForwarded() {
        if waitingSince == nil { waitingSince = Clock.monoNanos() }
    }

    func upstreamWritable() {
        guard let up = upstream else { return }
        if connecting {
            do {
                try up.finishConnect()
                connecting = false
            } catch {
                return lost("memcached \(context.memcached) unavailable: \(error)")
            }
        }
        flushUpstream()
    }

    func upstreamReadable() {
        guard let up = upstream, !connecting else { return }
        do {
            switch try upstreamIn.fill(from: up) {
            case .read: waitingSince = Clock.monoNanos()
            case .wouldBlock: return
            case .endOfStream: return lost("memcached closed the connection")
            }
        } catch {
            return lost("\(error)")
        }
        session?.takeReplies(self)
        if session?.isIdle ?? true { waitingSince = nil }
    }

    func flushUpstream() {
        guard let up = upstream, !connecting else { return }
        do {
            _ = try upstreamOut.flushNow(to: up)
        } catch {
            lost("\(error)")
        }
    }

    /// Drops the upstream connection and lets the session answer what was in flight.
    func lost(_ reason: String) {
        guard let up = upstream else { return }
        poller.remove(up.fd)
        up.close()
        upstream = nil
        connecting = false
        upstreamInterest = []
        upstreamIn.removeAll()
        upstreamOut.clear()
        waitingSince = nil
        session?.upstreamLost(self, reason: reason)
    }

    /// Bounds a connect that hangs and a memcached that stops answering.
    func checkTimers(now: UInt64) {
        guard upstream != nil else { return }
        // Waiting for the client to take its replies is not memcached being slow.
        if waitingSince != nil && replies.backlog > Self.backpressureBytes { waitingSince = now }
        if connecting && now > connectDeadline {
            lost("connect to memcached \(context.memcached) timed out after \(Self.connectTimeoutNanos / 1_000_000) ms")
        } else if let since = waitingSince, now - min(since, now) > UInt64(context.pool.ioTimeoutMs) * 1_000_000 {
            lost("memcached \(context.memcached) did not answer within \(context.pool.ioTimeoutMs) ms")
        }
    }

    // MARK: replies and journal

    /// Passes the next `n` bytes from memcached to the client, held until `ticket` settles.
    func relay(_ n: Int, waitingFor ticket: TapEmitter.SyncTicket? = nil, refusal: ReplyQueue.Refusal = .none) {
        upstreamIn.withBytes(0..<n) { replies.add($0, waitingFor: ticket, refusal: refusal) }
        upstreamIn.consume(n)
    }

    /// Journals writes memcached acknowledged; returns what a sync reply must wait for.
    ///
    /// Async records go out from the emitter's sender thread, which batches them under load.
    /// Sending them from the loop instead (measured) gained 7% saturated set throughput but
    /// cost 10–20 µs on every async write, the loop sending while the next request waited.
    func journal(_ records: [(RecordOp, [UInt8])]) -> TapEmitter.SyncTicket? {
        var last: UInt64?
        for (op, key) in records { last = context.emitter.emit(op, key: key) }
        return last.flatMap { context.emitter.ticket(for: $0) }
    }

    // MARK: life cycle

    /// Nothing left to read, answer or journal.
    var isFinished: Bool {
        let done = clientEnded || (session?.wantsClose ?? false)
        return done && (session?.isIdle ?? true) && !replies.isHolding && replies.out.isEmpty
    }

    /// Tells the poller what this connection can use now. Level-triggered readiness means a
    /// side we cannot act on (ended, backpressured) must be dropped from the interest set.
    func updateInterest() {
        var c: Poller.Interest = []
        let stalled = replies.backlog > Self.backpressureBytes || upstreamOut.pending > Self.backpressureBytes
        if !clientEnded && !(session?.wantsClose ?? false) && !stalled { c.insert(.read) }
        if !replies.out.isEmpty { c.insert(.write) }
        if c != clientInterest && !clientGone {
            clientInterest = c
            try? poller.modify(client.fd, token: clientToken, c)
        }
        guard let up = upstream else { return }
        // Replies the client is not taking stay in memcached's socket, not in our memory
        // (pipelined gets of big values would otherwise pile up here).
        var u: Poller.Interest = connecting ? [.write] : replies.backlog > Self.backpressureBytes ? [] : [.read]
        if !upstreamOut.isEmpty { u.insert(.write) }
        if u != upstreamInterest {
            upstreamInterest = u
            try? poller.modify(up.fd, token: upstreamToken, u)
        }
    }

    /// Closes the client, and returns a clean upstream connection to the pool.
    func close() {
        poller.remove(client.fd)
        client.close()
        guard let up = upstream else { return }
        poller.remove(up.fd)
        upstream = nil
        if !connecting && upstreamIn.isEmpty && upstreamOut.isEmpty && (session?.isIdle ?? true) {
            context.pool.release(up, dialect)
        } else {
            up.close()
        }
    }
}
