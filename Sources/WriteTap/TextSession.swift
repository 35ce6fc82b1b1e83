import JournalWire
import MemcacheProtocol
import UnderstudyPosix

/// One client speaking the text protocol (classic and meta) through the tap.
///
/// Replies are relayed byte for byte. A record is emitted only after memcached's success
/// reply was read (Invariant 1). `noreply` and meta-quiet writes get no reply on success, so
/// they are gathered into a quiet group that a fence closes: the client's own `mn`, or ours
/// before its next reply-bearing request or when its input runs dry. When the fence's `MN`
/// comes back, memcached has processed the group, and its writes are journaled.
final class TextSession: ProxySession {
    private enum Entry: LocalAnswering {
        /// An answer the tap gives itself, in its turn.
        case local([UInt8])
        case reply(ClientCommand, hits: [[UInt8]])
        /// Quiet writes and the fence after them; `clientFence`: the client sent the `mn`
        /// and gets its `MN`.
        case quietGroup([ClientCommand.Effect], clientFence: Bool)

        var localAnswer: [UInt8]? {
            if case .local(let bytes) = self { return bytes }
            return nil
        }
    }

    // Loop-owned: `@exclusivity(unchecked)` as explained on `TapLoop`.
    @exclusivity(unchecked) private var inFlight = InFlight<Entry>()
    /// Quiet writes forwarded since the last fence.
    @exclusivity(unchecked) private var unfenced: [ClientCommand.Effect]?
    /// A storage request whose data block has not fully arrived.
    @exclusivity(unchecked) private var awaitingData: (line: [UInt8], cmd: ClientCommand)?
    /// Bytes of a refused data block still to discard.
    private var discarding = 0
    /// Inside a line longer than memcached allows, discarding up to its end.
    private var discardingLine = false
    private(set) var wantsClose = false
    let maxItemSize: Int

    static let lineLimit = 8192

    init(maxItemSize: Int) {
        self.maxItemSize = maxItemSize
    }

    var isIdle: Bool { inFlight.isEmpty && unfenced == nil }

    // MARK: requests

    func takeRequests(_ c: TapConnection) {
        let input = c.clientIn
        while !wantsClose {
            if discarding > 0 {
                guard input.discard(&discarding) else { break }
                continue
            }
            if discardingLine {
                // memcached swallows an over-long line and answers ERROR; so do we.
                guard let lf = input.firstLF() else { input.removeAll(); break }
                input.consume(lf + 1)
                discardingLine = false
                inFlight.answer(Array("ERROR\r\n".utf8), to: c)
                continue
            }
            if let (line, cmd) = awaitingData {
                let len = cmd.dataLength!
                guard input.count >= len + 2 else { break }
                awaitingData = nil
                takeDataBlock(c, .saved(line), len, cmd)
                continue
            }
            // memcached ends a request line at LF, with or without CR.
            guard let (length, total) = input.line(lfOnly: true) else {
                if input.count > Self.lineLimit { discardingLine = true; continue }
                break
            }
            if length > Self.lineLimit {
                input.consume(total)
                inFlight.answer(Array("ERROR\r\n".utf8), to: c)
                continue
            }
            let crlf = length > 0 && input.byte(at: length - 1) == 0x0D
            let end = crlf ? length - 1 : length
            let cmd = input.withBytes(0..<end) { ClientCommand.parse($0, maxItemSize: maxItemSize) }
            if let len = cmd.dataLength {
                if cmd.localReply != nil {
                    input.consume(total)
                    discarding = len + 2
                    if !cmd.quiet { inFlight.answer(cmd.localReply!, to: c) }
                } else if crlf && input.count >= total + len + 2 {
                    takeDataBlock(c, .buffered(line: total), len, cmd)
                } else {
                    awaitingData = (input.bytes(0..<end), cmd)
                    input.consume(total)
                }
                continue
            }
            if crlf {
                handle(c, .buffered(line: total), data: 0, cmd)
            } else {
                // Forwarded with the CRLF memcached's other clients send.
                let line = input.bytes(0..<end)
                input.consume(total)
                handle(c, .saved(line), data: 0, cmd)
            }
        }
        // Input ran dry (or the client quit): prove the quiet writes landed now rather than
        // whenever the client next speaks.
        if unfenced != nil { closeGroup(c) }
    }

    /// Where a request's line is: still at the head of the client's input (`line` bytes with
    /// its CRLF, the usual case: forwarded from there with its data in one copy), or copied
    /// out because its data block had not arrived.
    private enum RequestLine {
        case buffered(line: Int)
        case saved([UInt8])
    }

    /// A storage request whose data block (`len` bytes and CRLF) follows its line in the input.
    private func takeDataBlock(_ c: TapConnection, _ line: RequestLine, _ len: Int, _ cmd: ClientCommand) {
        let input = c.clientIn
        var at = 0
        if case .buffered(let n) = line { at = n }
        guard input.byte(at: at + len) == 0x0D && input.byte(at: at + len + 1) == 0x0A else {
            input.consume(at + len + 2)
            handle(c, .buffered(line: 0), data: 0, .local("CLIENT_ERROR bad data chunk", quiet: cmd.quiet))
            return
        }
        handle(c, line, data: len + 2, cmd)
    }

    /// One complete request: its line, then `data` bytes of its data block (with CRLF), lead
    /// `c.clientIn` (the line only if it is `.buffered`). Whatever it does, it consumes them.
    private func handle(_ c: TapConnection, _ line: RequestLine, data: Int, _ cmd: ClientCommand) {
        var size = data
        if case .buffered(let n) = line { size += n }
        if let reply = cmd.localReply {
            c.clientIn.consume(size)
            // memcached stays silent about refused storage under noreply; match it.
            if !cmd.quiet { inFlight.answer(reply, to: c) }
            return
        }
        if cmd.reply == .close {
            c.clientIn.consume(size)
            wantsClose = true
            return
        }
        if unfenced != nil && !cmd.quiet && !cmd.isNoop { closeGroup(c) }
        if let failure = c.ensureUpstream() {
            c.clientIn.consume(size)
            if !cmd.quiet { inFlight.answer(Array("SERVER_ERROR \(failure)\r\n".utf8), to: c) }
            return
        }
        if case .saved(let bytes) = line {
            c.forward(bytes)
            c.forward("\r\n")
        }
        if size > 0 { c.forwardClientBytes(size) }
        if cmd.quiet {
            unfenced.openOrAppend(cmd.effect)
            return
        }
        if cmd.isNoop {
            inFlight.append(.quietGroup(unfenced ?? [], clientFence: true))
            unfenced = nil
        } else {
            inFlight.append(.reply(cmd, hits: []))
        }
        c.expectReply()
    }

    private func closeGroup(_ c: TapConnection) {
        guard let effects = unfenced else { return }
        unfenced = nil
        c.forward("mn\r\n")
        inFlight.append(.quietGroup(effects, clientFence: false))
        c.expectReply()
    }


    // MARK: replies

    func takeReply(_ c: TapConnection) -> ReplyProgress {
        let input = c.upstreamIn
        guard let entry = inFlight.first else { return .done }
        switch entry {
        case .local:
            inFlight.answerLocals(to: c)
            return .progress
        case .quietGroup(let effects, let clientFence):
            guard let (length, total) = input.line() else { return .incomplete }
            let (reply, dataLength) = MetaReply.parseHeader(input.bytes(0..<length))
            if reply.status == .mn {
                inFlight.removeFirst()
                let ticket = c.journal(effects.flatMap { $0.records(hits: []) })
                if clientFence {
                    c.relay(total, waitingFor: ticket, refusal: .none)
                } else {
                    input.consume(total)
                }
                inFlight.answerLocals(to: c)
                return .done
            }
            // What quiet requests do say: errors, and mg hits.
            let size = total + (dataLength.map { $0 + 2 } ?? 0)
            guard input.count >= size else { return .incomplete }
            c.relay(size)
            return .progress
        case .reply(let cmd, let hits):
            return takeReply(c, cmd, hits)
        }
    }


    /// Consumes the head request's reply, or one `VALUE` or line of it.
    private func takeReply(_ c: TapConnection, _ cmd: ClientCommand, _ hits: [[UInt8]]) -> ReplyProgress {
        let input = c.upstreamIn
        switch cmd.reply {
        case .values:
            guard let (length, total) = input.line() else { return .incomplete }
            // Only gat and gats journal the keys they hit; a plain get needs just the length.
            let touches = cmd.effect == .touchHits
            let hit = input.withBytes(0..<length) { line -> (length: Int, key: [UInt8]?)? in
                if touches { return ValueHeader.parse(line).map { ($0.length, $0.key) } }
                return ValueHeader.dataLength(line).map { ($0, nil) }
            }
            if let hit {
                guard input.count >= total + hit.length + 2 else { return .incomplete }
                c.relay(total + hit.length + 2)
                if let key = hit.key { inFlight.updateFirst { $0 = .reply(cmd, hits: hits + [key]) } }
                return .progress
            }
            // END, or an error: the reply is complete. gat hits stand whatever the follower did.
            finish(c, total, waitingFor: c.journal(cmd.effect?.records(hits: hits) ?? []), refusal: .none)
        case .meta:
            guard let (length, total) = input.line() else { return .incomplete }
            let (reply, dataLength) = MetaReply.parseHeader(input.bytes(0..<length))
            let size = total + (dataLength.map { $0 + 2 } ?? 0)
            guard input.count >= size else { return .incomplete }
            let ok = Self.metaSuccess(cmd.effect, reply.status)
            finish(c, size, waitingFor: c.journal(ok ? cmd.effect?.record : nil), refusal: .text)
        case .untilEnd, .untilEndLF:
            let lf = cmd.reply == .untilEndLF
            guard let (length, total) = input.line(lfOnly: lf) else { return .incomplete }
            var line = input.bytes(0..<length)
            if lf && line.last == 0x0D { line.removeLast() }
            let last = Bytes.equals(line, "END") || ProtocolError.fromErrorLine(line) != nil || line.starts(with: Array("BUSY".utf8))
            c.relay(total)
            guard last else { return .progress }
            inFlight.removeFirst()
            inFlight.answerLocals(to: c)
        case .line, .close:
            guard let (length, total) = input.line() else { return .incomplete }
            let ok = input.withBytes(0..<length) { Self.lineSuccess(cmd.effect, $0) }
            finish(c, total, waitingFor: c.journal(ok ? cmd.effect?.record : nil), refusal: .text)
        }
        return .done
    }

    /// Ends the head request: relays its last `size` bytes, held in sync mode until the
    /// follower applied what the caller journaled (`ticket`).
    private func finish(_ c: TapConnection, _ size: Int, waitingFor ticket: TapEmitter.SyncTicket?, refusal: ReplyQueue.Refusal) {
        inFlight.removeFirst()
        c.relay(size, waitingFor: ticket, refusal: refusal)
        inFlight.answerLocals(to: c)
    }

    static func lineSuccess<C: Collection<UInt8>>(_ effect: ClientCommand.Effect?, _ l: C) -> Bool {
        guard let effect else { return false }
        switch effect {
        case .write: return Bytes.equals(l, "STORED") || Bytes.parseUInt(l) != nil
        case .delete: return Bytes.equals(l, "DELETED")
        case .touch: return Bytes.equals(l, "TOUCHED")
        case .flush: return Bytes.equals(l, "OK")
        default: return false
        }
    }

    static func metaSuccess(_ effect: ClientCommand.Effect?, _ status: MetaReply.Status) -> Bool {
        guard let effect else { return false }
        switch effect {
        case .write, .delete: return status == .hd || status == .va
        case .metaGet(_, let touches, let vivifies):
            return (touches && (status == .hd || status == .va)) || (vivifies && status == .en) || (vivifies && status == .va)
        default: return false
        }
    }

    // MARK: failure

    func upstreamLost(_ c: TapConnection, reason: String) {
        let lost = Array("SERVER_ERROR connection to memcached lost: \(reason)\r\n".utf8)
        var records: [(RecordOp, [UInt8])] = (unfenced ?? []).flatMap { $0.records(hits: []) }
        unfenced = nil
        for entry in inFlight.removeAll() {
            switch entry {
            case .local(let bytes):
                c.replies.add(bytes)
            case .quietGroup(let effects, let clientFence):
                records += effects.flatMap { $0.records(hits: []) }
                if clientFence { c.replies.add(lost) }
            case .reply(let cmd, _):
                if let r = cmd.effect?.record { records.append(r) }
                c.replies.add(lost)
            }
        }
        _ = c.journal(records)
    }
}
