import JournalWire
import MemcacheProtocol
import UnderstudyPosix

/// One client of the tap, driven by an event loop. Owns the client socket, its input and its
/// replies; the protocol session decides what the bytes mean, and the loop's shared
/// `Upstream` carries them to memcached and back in order. Nothing here blocks; everything
/// runs on the owning loop's thread.
final class TapConnection {
    let id: UInt64
    let client: Socket
    let context: TapContext
    let poller: Poller
    let clientIn = ReadBuffer()
    // Loop-owned: `@exclusivity(unchecked)` as explained on `TapLoop`.
    @exclusivity(unchecked) var replies = ReplyQueue()
    @exclusivity(unchecked) private(set) var session: (any ProxySession)?
    /// The loop's shared connection for this client's dialect (text until the first byte
    /// says binary).
    @exclusivity(unchecked) private(set) var upstream: Upstream
    private let binaryUpstream: Upstream

    /// The client sent its last byte (or failed): nothing more to read.
    private var clientEnded = false
    /// The client cannot take replies any more: drop them, but finish journaling.
    private var clientGone = false
    private var clientInterest: Poller.Interest = .read

    /// Past this much output the client has not taken, it is not read until it catches up.
    static let backpressureBytes = 4 << 20

    init(id: UInt64, client: Socket, context: TapContext, poller: Poller, text: Upstream, binary: Upstream) throws(SystemError) {
        self.id = id
        self.client = client
        self.context = context
        self.poller = poller
        self.upstream = text
        self.binaryUpstream = binary
        Sys.setNonBlocking(client.fd, true)
        try poller.add(client.fd, token: clientToken, clientInterest)
    }

    /// Even tokens are clients; odd ones are the loop's upstreams.
    var clientToken: UInt64 { id << 1 }

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
                upstream = binaryUpstream
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

    /// Makes sure the upstream connection exists or is being made. Returns why not, if not.
    func ensureUpstream() -> String? { upstream.ensure() }

    func forward(_ bytes: [UInt8]) {
        bytes.withUnsafeBytes { upstream.forward($0) }
    }

    func forward(_ text: StaticString) {
        text.withUTF8Buffer { upstream.forward(UnsafeRawBufferPointer($0)) }
    }

    /// Forwards the first `n` bytes of the client's input, and consumes them.
    func forwardClientBytes(_ n: Int) {
        clientIn.withBytes(0..<n) { upstream.forward($0) }
        clientIn.consume(n)
    }

    /// The request just forwarded gets a reply this client's session will consume.
    func expectReply() { upstream.expectReply(for: self) }

    /// Replies from memcached, the next of which is this client's.
    var upstreamIn: ReadBuffer { upstream.input }

    func takeReply() -> ReplyProgress { session?.takeReply(self) ?? .done }

    func upstreamLost(_ reason: String) { session?.upstreamLost(self, reason: reason) }

    // MARK: replies and journal

    /// Passes the next `n` bytes from memcached to the client, held until `ticket` settles.
    func relay(_ n: Int, waitingFor ticket: TapEmitter.SyncTicket? = nil, refusal: ReplyQueue.Refusal = .none) {
        upstreamIn.withBytes(0..<n) { replies.add($0, waitingFor: ticket, refusal: refusal) }
        upstreamIn.consume(n)
    }

    /// Journals writes memcached acknowledged; returns what a sync reply must wait for.
    ///
    /// The records are only queued: the loop ships them after the turn's replies are written
    /// (`TapLoop.run`). Sending here, before the reply, cost 10–20 µs on every async write.
    func journal(_ records: [(RecordOp, [UInt8])]) -> TapEmitter.SyncTicket? {
        var last: UInt64?
        for (op, key) in records { last = context.emitter.emitQueued(op, key: key) }
        return ticket(after: last)
    }

    /// One record (or none), with no array built around it: a request names one key.
    func journal(_ record: (RecordOp, [UInt8])?) -> TapEmitter.SyncTicket? {
        ticket(after: record.map { context.emitter.emitQueued($0.0, key: $0.1) })
    }

    private func ticket(after seq: UInt64?) -> TapEmitter.SyncTicket? {
        seq.flatMap { context.emitter.ticket(for: $0) }
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
        if !clientEnded && !(session?.wantsClose ?? false) && replies.backlog <= Self.backpressureBytes { c.insert(.read) }
        if !replies.out.isEmpty { c.insert(.write) }
        if c != clientInterest && !clientGone {
            clientInterest = c
            try? poller.modify(client.fd, token: clientToken, c)
        }
    }

    func close() {
        poller.remove(client.fd)
        client.close()
        isClosed = true
    }

    private(set) var isClosed = false
}
