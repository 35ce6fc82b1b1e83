import UnderstudyPosix

/// One connection to memcached shared by every client of a loop that speaks one dialect, as
/// twemproxy does.
///
/// memcached answers a connection's requests in order, so the replies come back in the
/// order requests were forwarded, whichever client sent them: `order` says whose reply is
/// next, and that client's session consumes it. Per-client order holds because each
/// client's requests enter the pipe in its own order. Sharing is what makes the proxy cheap
/// under load: one send carries a turn's requests from all clients, one read brings their
/// replies back, and memcached's worker wakes once for the lot.
///
/// memcached fixes a connection's protocol from its first byte, so text and binary clients
/// get separate upstreams. Nothing here blocks; it runs on the loop's thread.
final class Upstream {
    let context: TapContext
    let poller: Poller
    let token: UInt64
    // Loop-owned: `@exclusivity(unchecked)` as explained on `TapLoop`.
    @exclusivity(unchecked) private(set) var socket: Socket?
    private var connecting = false
    private var connectDeadline: UInt64 = 0
    let input = ReadBuffer(capacity: 64 * 1024)
    @exclusivity(unchecked) private var output = WriteBuffer()
    private var interest: Poller.Interest = []
    /// Whose reply comes next: one entry per forwarded request (or fence) awaiting one.
    @exclusivity(unchecked) private var order = InFlight<TapConnection>()
    /// Since when a forwarded request has waited with no byte back from memcached.
    private var waitingSince: UInt64?
    /// Clients that got replies or errors since the loop last looked.
    @exclusivity(unchecked) var touched: [TapConnection] = []

    static let connectTimeoutNanos: UInt64 = 1_000_000_000

    /// memcached owes this connection a reply: a turn will come when it arrives.
    var awaitsReply: Bool { !order.isEmpty }

    init(token: UInt64, context: TapContext, poller: Poller) {
        self.token = token
        self.context = context
        self.poller = poller
    }

    /// Makes sure the connection exists or is being made. Returns why not, if not.
    func ensure() -> String? {
        if socket != nil { return nil }
        do {
            let (s, pending) = try Socket.startConnect(to: context.memcached)
            socket = s
            connecting = pending
            connectDeadline = Clock.monoNanos() + Self.connectTimeoutNanos
            interest = pending ? .write : .read
            try poller.add(s.fd, token: token, interest)
            return nil
        } catch {
            socket?.close()
            socket = nil
            return "memcached \(context.memcached) unavailable: \(error)"
        }
    }

    func forward(_ bytes: UnsafeRawBufferPointer) {
        output.append(bytes)
        if waitingSince == nil { waitingSince = Clock.monoNanos() }
    }

    /// `c` sent a request (or fence) whose reply it will consume, in this position.
    func expectReply(for c: TapConnection) {
        order.append(c)
    }

    func writable() {
        guard let s = socket else { return }
        if connecting {
            do {
                try s.finishConnect()
                connecting = false
            } catch {
                return lost("memcached \(context.memcached) unavailable: \(error)")
            }
        }
        flush()
    }

    func readable() {
        guard let s = socket, !connecting else { return }
        do {
            switch try input.fill(from: s) {
            case .read: waitingSince = Clock.monoNanos()
            case .wouldBlock: return
            case .endOfStream: return lost("memcached closed the connection")
            }
        } catch {
            return lost("\(error)")
        }
        while let c = order.first {
            switch c.takeReply() {
            case .incomplete:
                return
            case .progress:
                continue
            case .done:
                order.removeFirst()
                touched.append(c)
            }
        }
        waitingSince = nil
    }

    func flush() {
        guard let s = socket, !connecting else { return }
        do {
            _ = try output.flushNow(to: s)
        } catch {
            lost("\(error)")
        }
    }

    /// Drops the connection; every client with a request in flight answers it with an
    /// error and journals what may have been applied. The next request reconnects. The
    /// connection is reset, not closed: a write still queued behind a cut link must not land
    /// after its key was journaled (see `Socket.abort`).
    func lost(_ reason: String) {
        guard let s = socket else { return }
        poller.remove(s.fd)
        s.abort()
        socket = nil
        connecting = false
        interest = []
        input.removeAll()
        output.clear()
        waitingSince = nil
        var seen = Set<ObjectIdentifier>()
        for c in order.removeAll() where seen.insert(ObjectIdentifier(c)).inserted {
            c.upstreamLost(reason)
            touched.append(c)
        }
    }

    /// Bounds a connect that hangs and a memcached that stops answering.
    func checkTimers(now: UInt64) {
        guard socket != nil else { return }
        if connecting && now > connectDeadline {
            lost("connect to memcached \(context.memcached) timed out after \(Self.connectTimeoutNanos / 1_000_000) ms")
        } else if let since = waitingSince, now - min(since, now) > UInt64(context.ioTimeoutMs) * 1_000_000 {
            lost("memcached \(context.memcached) did not answer within \(context.ioTimeoutMs) ms")
        }
    }

    func updateInterest() {
        guard let s = socket else { return }
        var want: Poller.Interest = connecting ? [.write] : [.read]
        if !output.isEmpty { want.insert(.write) }
        if want != interest {
            interest = want
            try? poller.modify(s.fd, token: token, want)
        }
    }

    func close() {
        guard let s = socket else { return }
        poller.remove(s.fd)
        s.close()
        socket = nil
    }
}
