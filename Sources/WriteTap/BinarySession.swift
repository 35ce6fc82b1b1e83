import JournalWire
import MemcacheProtocol
import UnderstudyPosix

/// One client speaking the binary protocol through the tap.
///
/// Quiet opcodes (SETQ, DELETEQ, ...) answer only on failure; clients end such a batch with a
/// NOOP. Quiet requests form a group closed by a fence: the client's NOOP, or ours (with our
/// own opaque) before its next reply-bearing request or when its input runs dry. Failures
/// come back tagged with the request's opaque, so exactly the quiet writes that succeeded
/// are journaled when the fence returns.
final class BinarySession: ProxySession {
    private struct Quiet {
        var opaque: UInt32
        /// What to journal if the write succeeded; nil once it failed, or if it writes nothing.
        var record: (RecordOp, [UInt8])?
    }

    private enum Entry: LocalAnswering {
        case local([UInt8])
        case reply(BinaryHeader, key: [UInt8])
        /// `fence`: the opaque of the NOOP that closes the group; `clientFence`: the client
        /// sent it and gets its reply.
        case quietGroup([Quiet], fence: UInt32, clientFence: Bool)

        var localAnswer: [UInt8]? {
            if case .local(let bytes) = self { return bytes }
            return nil
        }
    }

    // Loop-owned: `@exclusivity(unchecked)` as explained on `TapLoop`.
    @exclusivity(unchecked) private var inFlight = InFlight<Entry>()
    @exclusivity(unchecked) private var unfenced: [Quiet]?
    private var discarding = 0
    private(set) var wantsClose = false
    let maxBody: Int
    static let fenceOpaque: UInt32 = 0xFEED_F00D

    init(maxItemSize: Int) {
        // Key, extras and value; memcached refuses values over item_size_max itself.
        maxBody = maxItemSize + 512
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
            guard input.count >= BinaryHeader.size else { break }
            let h = BinaryHeader(parsing: input.bytes(0..<BinaryHeader.size))
            guard h.magic == BinaryPacket.requestMagic else {
                // memcached closes a binary connection on a bad magic byte: it cannot resynchronise.
                input.removeAll()
                wantsClose = true
                break
            }
            let bodyLength = Int(h.bodyLength)
            guard bodyLength <= maxBody else {
                input.consume(BinaryHeader.size)
                discarding = bodyLength
                inFlight.answer(BinaryPacket.errorResponse(opcode: h.opcode, status: BinaryPacket.Status.valueTooLarge, opaque: h.opaque, message: "Too large."), to: c)
                continue
            }
            let size = BinaryHeader.size + bodyLength
            guard input.count >= size else { break }
            guard Int(h.keyLength) + Int(h.extrasLength) <= bodyLength, h.keyLength <= 250 else {
                input.consume(size)
                inFlight.answer(BinaryPacket.errorResponse(opcode: h.opcode, status: BinaryPacket.Status.invalidArguments, opaque: h.opaque, message: "Invalid arguments"), to: c)
                continue
            }
            if h.opcode == BinaryPacket.Opcode.quit || h.opcode == BinaryPacket.Opcode.quitQ {
                input.consume(size)
                closeGroup(c)
                if h.opcode == BinaryPacket.Opcode.quit {
                    inFlight.answer(BinaryHeader(magic: BinaryPacket.responseMagic, opcode: h.opcode, opaque: h.opaque).encode(), to: c)
                }
                wantsClose = true
                break
            }
            let keyStart = BinaryHeader.size + Int(h.extrasLength)
            let key = input.bytes(keyStart..<(keyStart + Int(h.keyLength)))
            let quiet = BinaryPacket.isQuiet(h.opcode)
            let noop = h.opcode == BinaryPacket.Opcode.noop
            if !quiet && !noop { closeGroup(c) }
            if let failure = c.ensureUpstream() {
                input.consume(size)
                inFlight.answer(BinaryPacket.errorResponse(opcode: h.opcode, status: BinaryPacket.Status.temporaryFailure, opaque: h.opaque, message: failure), to: c)
                continue
            }
            c.forwardClientBytes(size)
            if quiet {
                unfenced.openOrAppend(Quiet(opaque: h.opaque, record: BinaryPacket.effect(h.opcode)?.record(key)))
                continue
            }
            if noop {
                inFlight.append(.quietGroup(unfenced ?? [], fence: h.opaque, clientFence: true))
                unfenced = nil
            } else {
                inFlight.append(.reply(h, key: key))
            }
            c.expectReply()
        }
        closeGroup(c)
    }

    private func closeGroup(_ c: TapConnection) {
        guard let quiet = unfenced else { return }
        unfenced = nil
        c.forward(BinaryHeader(magic: BinaryPacket.requestMagic, opcode: BinaryPacket.Opcode.noop, opaque: Self.fenceOpaque).encode())
        inFlight.append(.quietGroup(quiet, fence: Self.fenceOpaque, clientFence: false))
        c.expectReply()
    }


    // MARK: replies

    func takeReply(_ c: TapConnection) -> ReplyProgress {
        let input = c.upstreamIn
        guard let entry = inFlight.first else { return .done }
        if case .local = entry {
            inFlight.answerLocals(to: c)
            return .progress
        }
        guard input.count >= BinaryHeader.size else { return .incomplete }
        let rh = BinaryHeader(parsing: input.bytes(0..<BinaryHeader.size))
        let size = BinaryHeader.size + Int(rh.bodyLength)
        guard input.count >= size else { return .incomplete }
        switch entry {
        case .local:
            return .progress
        case .quietGroup(var quiet, let fence, let clientFence):
            if rh.opcode == BinaryPacket.Opcode.noop && rh.opaque == fence {
                inFlight.removeFirst()
                let ticket = c.journal(quiet.compactMap(\.record))
                if clientFence {
                    c.relay(size, waitingFor: ticket, refusal: .none)
                } else {
                    input.consume(size)
                }
                inFlight.answerLocals(to: c)
                return .done
            }
            // A reply to a quiet request: a failure means its write did not happen.
            if rh.status != BinaryPacket.Status.ok, let i = quiet.firstIndex(where: { $0.opaque == rh.opaque }) {
                quiet[i].record = nil
                inFlight.updateFirst { $0 = .quietGroup(quiet, fence: fence, clientFence: clientFence) }
            }
            c.relay(size)
            return .progress
        case .reply(let h, let key):
            // Not ours (a client reusing opaques across quiet requests), or one STAT of many
            // (the last has an empty key): pass it on, the request goes on.
            let stat = h.opcode == BinaryPacket.Opcode.stat && rh.keyLength != 0 && rh.status == BinaryPacket.Status.ok
            guard rh.opaque == h.opaque && rh.opcode == h.opcode && !stat else {
                c.relay(size)
                return .progress
            }
            inFlight.removeFirst()
            let record = rh.status == BinaryPacket.Status.ok ? BinaryPacket.effect(h.opcode)?.record(key) : nil
            c.relay(size, waitingFor: c.journal(record), refusal: .binary(opcode: h.opcode, opaque: h.opaque))
            inFlight.answerLocals(to: c)
            return .done
        }
    }


    // MARK: failure

    func upstreamLost(_ c: TapConnection, reason: String) {
        var records = (unfenced ?? []).compactMap(\.record)
        unfenced = nil
        for entry in inFlight.removeAll() {
            switch entry {
            case .local(let bytes):
                c.replies.add(bytes)
            case .quietGroup(let quiet, let fence, let clientFence):
                records += quiet.compactMap(\.record)
                if clientFence { c.replies.add(Self.lost(BinaryPacket.Opcode.noop, fence, reason)) }
            case .reply(let h, let key):
                if let r = BinaryPacket.effect(h.opcode)?.record(key) { records.append(r) }
                c.replies.add(Self.lost(h.opcode, h.opaque, reason))
            }
        }
        _ = c.journal(records)
    }

    static func lost(_ opcode: UInt8, _ opaque: UInt32, _ reason: String) -> [UInt8] {
        BinaryPacket.errorResponse(opcode: opcode, status: BinaryPacket.Status.temporaryFailure, opaque: opaque, message: "connection to memcached lost: \(reason)")
    }
}
