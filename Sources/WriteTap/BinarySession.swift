import JournalWire
import MemcacheProtocol
import UnderstudyPosix

/// One client speaking the binary protocol through the tap.
///
/// Quiet opcodes (SETQ, DELETEQ, ...) answer only on failure; clients end such a batch with a
/// NOOP. Before any reply-bearing request the session checks it has no quiet request
/// outstanding, or fences with its own NOOP; failures come back tagged with the request's
/// opaque, so exactly the quiet writes that succeeded are journaled.
final class BinarySession {
    let client: ByteStream
    let upstream: SessionUpstream
    let maxBody: Int
    struct Quiet { var opaque: UInt32; var effect: BinaryPacket.Effect?; var key: [UInt8] }
    var unfenced: [Quiet] = []
    static let fenceOpaque: UInt32 = 0xFEED_F00D

    init(proxy: TapProxy, client: ByteStream) {
        self.client = client
        self.upstream = SessionUpstream(proxy: proxy, dialect: .binary)
        // Key, extras and value; memcached refuses values over item_size_max itself.
        self.maxBody = proxy.itemSizeMax + 512
    }

    func run() {
        do {
            while try step() {}
        } catch {}
        if !unfenced.isEmpty { fence() }
    }

    func step() throws(StreamError) -> Bool {
        if client.buffered < BinaryHeader.size {
            if !unfenced.isEmpty { fence() }
            try client.flush()
        }
        let headBytes: [UInt8]
        do { headBytes = try client.readExact(BinaryHeader.size) } catch .closed { return false }
        let h = BinaryHeader(parsing: headBytes)
        guard h.magic == BinaryPacket.requestMagic else {
            // memcached closes a binary connection on a bad magic byte: it cannot resynchronise.
            return false
        }
        let bodyLength = Int(h.bodyLength)
        guard bodyLength <= maxBody else {
            try client.skip(bodyLength)
            client.write(BinaryPacket.errorResponse(opcode: h.opcode, status: BinaryPacket.Status.valueTooLarge, opaque: h.opaque, message: "Too large."))
            return true
        }
        let body = try client.readExact(bodyLength)
        guard Int(h.keyLength) + Int(h.extrasLength) <= bodyLength, h.keyLength <= 250 else {
            client.write(BinaryPacket.errorResponse(opcode: h.opcode, status: BinaryPacket.Status.invalidArguments, opaque: h.opaque, message: "Invalid arguments"))
            return true
        }
        if h.opcode == BinaryPacket.Opcode.quit || h.opcode == BinaryPacket.Opcode.quitQ {
            if !unfenced.isEmpty { fence() }
            if h.opcode == BinaryPacket.Opcode.quit {
                client.write(BinaryHeader(magic: BinaryPacket.responseMagic, opcode: h.opcode, opaque: h.opaque).encode())
            }
            try? client.flush()
            return false
        }
        let keyStart = Int(h.extrasLength)
        let key = Array(body[keyStart..<(keyStart + Int(h.keyLength))])
        let quiet = BinaryPacket.isQuiet(h.opcode)
        if !quiet && !unfenced.isEmpty && h.opcode != BinaryPacket.Opcode.noop { fence() }
        forward(headBytes + body, h, key: key, quiet: quiet)
        return true
    }

    func forward(_ packet: [UInt8], _ h: BinaryHeader, key: [UInt8], quiet: Bool) {
        let up: ByteStream
        switch upstream.connection() {
        case .success(let s): up = s
        case .failure(let f):
            client.write(BinaryPacket.errorResponse(opcode: h.opcode, status: BinaryPacket.Status.temporaryFailure, opaque: h.opaque, message: f.message))
            return
        }
        up.write(packet)
        let effect = BinaryPacket.effect(h.opcode)
        do {
            try up.flush()
            if quiet {
                unfenced.append(Quiet(opaque: h.opaque, effect: effect, key: key))
                return
            }
            // Replies arrive in order; with no quiet request outstanding (or a client NOOP
            // closing a quiet batch) everything before ours belongs to the quiet ones.
            while true {
                let (rh, rbody) = try readResponse(up)
                if rh.opaque == h.opaque && rh.opcode == h.opcode {
                    if h.opcode == BinaryPacket.Opcode.noop { journalUnfenced() }
                    var refusal: String?
                    if rh.status == BinaryPacket.Status.ok, let effect { refusal = journal(effect, key) }
                    if let refusal {
                        client.write(BinaryPacket.errorResponse(opcode: h.opcode, status: BinaryPacket.Status.temporaryFailure, opaque: h.opaque, message: refusal))
                    } else {
                        client.write(rh.encode())
                        client.write(rbody)
                    }
                    // STAT streams one packet per statistic and ends with an empty key.
                    if h.opcode == BinaryPacket.Opcode.stat && rh.keyLength != 0 && rh.status == BinaryPacket.Status.ok { continue }
                    return
                }
                noteQuietReply(rh)
                client.write(rh.encode())
                client.write(rbody)
            }
        } catch {
            upstream.drop()
            if let effect { _ = journal(effect, key) }
            client.write(BinaryPacket.errorResponse(opcode: h.opcode, status: BinaryPacket.Status.temporaryFailure, opaque: h.opaque,
                                                    message: "connection to memcached lost: \(error)"))
        }
    }

    func readResponse(_ up: ByteStream) throws(StreamError) -> (BinaryHeader, [UInt8]) {
        let rh = BinaryHeader(parsing: try up.readExact(BinaryHeader.size))
        return (rh, try up.readExact(Int(rh.bodyLength)))
    }

    /// A reply to a quiet request: a failure means its write did not happen.
    func noteQuietReply(_ rh: BinaryHeader) {
        if rh.status != BinaryPacket.Status.ok, let i = unfenced.firstIndex(where: { $0.opaque == rh.opaque }) {
            unfenced[i].effect = nil
        }
    }

    func fence() {
        guard case .success(let up) = upstream.connection() else { return journalUnfenced() }
        up.write(BinaryHeader(magic: BinaryPacket.requestMagic, opcode: BinaryPacket.Opcode.noop, opaque: Self.fenceOpaque).encode())
        do {
            try up.flush()
            while true {
                let (rh, rbody) = try readResponse(up)
                if rh.opcode == BinaryPacket.Opcode.noop && rh.opaque == Self.fenceOpaque { break }
                noteQuietReply(rh)
                client.write(rh.encode())
                client.write(rbody)
            }
        } catch {
            upstream.drop()
        }
        journalUnfenced()
    }

    func journalUnfenced() {
        let pending = unfenced
        unfenced.removeAll()
        for q in pending { if let e = q.effect { _ = journal(e, q.key) } }
    }

    func journal(_ e: BinaryPacket.Effect, _ key: [UInt8]) -> String? {
        upstream.journal(e.recordOp, e == .flush ? [] : key)
    }
}
