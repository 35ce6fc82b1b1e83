import JournalWire
import UnderstudyPosix

/// The connection to the keeper: handshake and resend, the sender thread, and the reader
/// of acks, applied seqs and sync state.
extension TapEmitter {
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
            try ch.send(.tapStart(tapID: tapID, wantsApplied: options.mode != .async))
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
    /// most 2,500 (400 µs apart). The high end was 1 ms until the loops' reply spin
    /// (`ReplySpin`) freed the tap's time: at 400 µs four connections of sets still ran
    /// 1.16–1.21× twemproxy (as at 1 ms), lag p50 at 20k writes/s went 0.49 → 0.38 ms, and the
    /// most the tap sustained beside a follower 28.5k → 26.5k writes/s; at 200 µs the sets
    /// fell to 1.05–1.10× and that maximum to 23.8k (`understudy-bench tap`/`lag`, 3 runs
    /// each, twice).
    static let shipModeration = ShipPacer.Moderation(lowRate: 10_000, lowInterval: 200_000, highRate: 40_000, highInterval: 400_000)
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
