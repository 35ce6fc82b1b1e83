import UnderstudyPosix

/// Every message of the journal protocol (spec: README, "Journal wire protocol").
///
/// A frame is `u32 length | u8 type | payload`, big-endian, length covering type and payload.
public enum Message: Equatable, Sendable {
    // Handshake
    case hello(version: UInt8, nonce: [UInt8], epoch: UInt64)
    case auth(kind: PeerKind, mac: [UInt8], nonce: [UInt8])
    case authOK(mac: [UInt8])
    case refused(reason: String)
    // Tap ⇄ keeper
    /// `wantsApplied`: false for an async tap, which never waits on applied seqs, so the
    /// keeper does not wake it with one per follower ack. Sent as a trailing 0 byte only when
    /// false, so a tap from before the flag (no byte) means true.
    case tapStart(tapID: [UInt8], wantsApplied: Bool)
    case tapWelcome(runID: UInt64, ackedSeq: UInt64)
    case records([TapRecord])
    case tapAck(seq: UInt64)
    case tapApplied(seq: UInt64)
    case tapGap(fromSeq: UInt64, lost: UInt64)
    case syncState(followerInSync: Bool)
    // Follower ⇄ keeper
    case follow(runID: UInt64, applied: UInt64, epoch: UInt64)
    case resume(runID: UInt64, from: UInt64)
    case fullSync(runID: UInt64, from: UInt64)
    case stream([StreamRecord])
    case followerAck(applied: UInt64)
    case ping(endOffset: UInt64, stampNanos: Int64)
    /// The follower is alive but has nothing to claim (during a full sync).
    case followerAlive
    // Peer daemon ⇄ daemon
    case peerInfo(active: Bool, epoch: UInt64, runID: UInt64)

    /// `probe` is another daemon asking who we are (two actives must find each other).
    public enum PeerKind: UInt8, Sendable { case tap = 1, follower = 2, probe = 3 }

    public static let version: UInt8 = 1
    public static let maxFrame = 16 << 20
    static let recordsType: UInt8 = 0x12
    static let streamType: UInt8 = 0x23

    var type: UInt8 {
        switch self {
        case .hello: return 0x01
        case .auth: return 0x02
        case .authOK: return 0x03
        case .refused: return 0x04
        case .tapStart: return 0x10
        case .tapWelcome: return 0x11
        case .records: return Self.recordsType
        case .tapAck: return 0x13
        case .tapApplied: return 0x14
        case .tapGap: return 0x15
        case .syncState: return 0x16
        case .follow: return 0x20
        case .resume: return 0x21
        case .fullSync: return 0x22
        case .stream: return Self.streamType
        case .followerAck: return 0x24
        case .ping: return 0x25
        case .followerAlive: return 0x26
        case .peerInfo: return 0x30
        }
    }

    /// The complete frame, length prefix included.
    public func frame() -> [UInt8] {
        var out: [UInt8] = []
        frame(into: &out)
        return out
    }

    /// Appends the complete frame to `out`: a sender's output buffer, so the frame is built
    /// where it is sent from rather than built and then copied there.
    public func frame(into out: inout [UInt8]) {
        Self.appendFrame(type: type, sizeHint: sizeHint, to: &out) { w in
            switch self {
            case .hello(let v, let nonce, let epoch): w.raw(Array("USJ".utf8)); w.u8(v); w.raw(nonce); w.u64(epoch)
            case .auth(let kind, let mac, let nonce): w.u8(kind.rawValue); w.raw(mac); w.raw(nonce)
            case .authOK(let mac): w.raw(mac)
            case .refused(let reason): w.short(Array(reason.utf8))
            case .tapStart(let id, let wants):
                // The flag is sent only when false, so each value has one encoding and a
                // frame from a tap older than the flag reads as the true it meant.
                w.short(id)
                if !wants { w.u8(0) }
            case .tapWelcome(let run, let seq): w.u64(run); w.u64(seq)
            case .records(let recs): Self.writeRecords(recs, &w)
            case .tapAck(let s), .tapApplied(let s): w.u64(s)
            case .tapGap(let from, let lost): w.u64(from); w.u64(lost)
            case .syncState(let ok): w.u8(ok ? 1 : 0)
            case .follow(let run, let applied, let epoch): w.u64(run); w.u64(applied); w.u64(epoch)
            case .resume(let run, let from), .fullSync(let run, let from): w.u64(run); w.u64(from)
            case .stream(let recs): Self.writeStream(recs, &w)
            case .followerAck(let a): w.u64(a)
            case .ping(let end, let stamp): w.u64(end); w.i64(stamp)
            case .followerAlive: break
            case .peerInfo(let active, let epoch, let run): w.u8(active ? 1 : 0); w.u64(epoch); w.u64(run)
            }
        }
    }

    /// Appends a `records` frame of the records at `range` of `queue` (a tap's buffer, read in
    /// place: copying them into an array first cost an allocation and a retain and release
    /// per record on every shipment). Concrete, not generic: generic code called across
    /// modules is not specialized, and walked the records through witness tables at some
    /// 5,000 instructions each.
    public static func appendRecordsFrame(_ queue: ChunkedQueue<TapRecord>, range: Range<Int>, to out: inout [UInt8]) {
        appendFrame(type: recordsType, sizeHint: recordsHint(range.count), to: &out) { w in
            writeRecords(queue[range], &w)
        }
    }

    /// Appends a `stream` frame of the records at `range` of `queue` (the keeper's backlog,
    /// read in place as `appendRecordsFrame` reads a tap's buffer).
    public static func appendStreamFrame(_ queue: ChunkedQueue<StreamRecord>, range: Range<Int>, to out: inout [UInt8]) {
        appendFrame(type: streamType, sizeHint: streamHint(range.count), to: &out) { w in
            writeStream(queue[range], &w)
        }
    }

    private static func writeStream<C: Collection<StreamRecord>>(_ recs: C, _ w: inout WireWriter) {
        w.u32(UInt32(recs.count))
        for r in recs { w.u64(r.offset); w.i64(r.stampNanos); w.u8(r.op.rawValue); w.short(r.key) }
    }

    private static func writeRecords<C: Collection<TapRecord>>(_ recs: C, _ w: inout WireWriter) {
        w.u32(UInt32(recs.count))
        for r in recs { w.u64(r.seq); w.u8(r.op.rawValue); w.short(r.key) }
    }

    /// One buffer, sized up front, the length patched in at the end: building the body and
    /// then copying it behind its length was most of the tap's allocations per write.
    private static func appendFrame(type: UInt8, sizeHint: Int, to out: inout [UInt8], _ body: (inout WireWriter) -> Void) {
        var w = WireWriter()
        swap(&w.bytes, &out)  // moves the buffer, no copy
        let start = w.bytes.count
        // Grown geometrically: a buffer that gathers many frames must not be reallocated to
        // the exact size for each.
        if w.bytes.capacity < start + sizeHint { w.bytes.reserveCapacity(max(start + sizeHint, 2 * w.bytes.capacity)) }
        w.u32(0)
        w.u8(type)
        body(&w)
        let len = UInt32(w.bytes.count - start - 4)
        for i in 0..<4 { w.bytes[start + i] = UInt8(truncatingIfNeeded: len >> UInt32(24 - 8 * i)) }
        swap(&w.bytes, &out)
    }

    /// Room for the frame: exact for record batches with keys up to 64 bytes, ample otherwise.
    private var sizeHint: Int {
        switch self {
        case .records(let r): return Self.recordsHint(r.count)
        case .stream(let r): return Self.streamHint(r.count)
        default: return 64
        }
    }

    private static func recordsHint(_ n: Int) -> Int { 9 + n * (11 + 64) }
    private static func streamHint(_ n: Int) -> Int { 9 + n * (19 + 64) }

    /// Decodes one frame body (type byte and payload, without the length prefix).
    public static func decode(_ body: [UInt8]) throws(JournalError) -> Message {
        var r = WireReader(body)
        let type = try r.u8()
        let m: Message
        switch type {
        case 0x01:
            guard try r.raw(3) == Array("USJ".utf8) else { throw .malformed("bad magic; not an Understudy journal port?") }
            let v = try r.u8()
            guard v == version else { throw .unsupportedVersion(v) }
            m = .hello(version: v, nonce: try r.raw(32), epoch: try r.u64())
        case 0x02:
            guard let kind = PeerKind(rawValue: try r.u8()) else { throw .malformed("unknown peer kind") }
            m = .auth(kind: kind, mac: try r.raw(32), nonce: try r.raw(32))
        case 0x03: m = .authOK(mac: try r.raw(32))
        case 0x04:
            guard let reason = String(validating: try r.short(), as: UTF8.self) else { throw .malformed("reason is not UTF-8") }
            m = .refused(reason: reason)
        case 0x10:
            let id = try r.short()
            let wants = r.atEnd
            if !wants, try r.u8() != 0 { throw .malformed("tap-start flag is sent only as 0") }
            m = .tapStart(tapID: id, wantsApplied: wants)
        case 0x11: m = .tapWelcome(runID: try r.u64(), ackedSeq: try r.u64())
        case recordsType:
            let n = try r.u32()
            guard n <= UInt32(maxFrame / 11) else { throw .malformed("record count \(n) too large") }
            var recs: [TapRecord] = []
            recs.reserveCapacity(Int(n))
            for _ in 0..<n {
                let seq = try r.u64()
                recs.append(TapRecord(seq: seq, op: try op(r.u8()), key: try r.short()))
            }
            m = .records(recs)
        case 0x13: m = .tapAck(seq: try r.u64())
        case 0x14: m = .tapApplied(seq: try r.u64())
        case 0x15: m = .tapGap(fromSeq: try r.u64(), lost: try r.u64())
        case 0x16: m = .syncState(followerInSync: try r.bool())
        case 0x20: m = .follow(runID: try r.u64(), applied: try r.u64(), epoch: try r.u64())
        case 0x21: m = .resume(runID: try r.u64(), from: try r.u64())
        case 0x22: m = .fullSync(runID: try r.u64(), from: try r.u64())
        case streamType:
            let n = try r.u32()
            guard n <= UInt32(maxFrame / 19) else { throw .malformed("record count \(n) too large") }
            var recs: [StreamRecord] = []
            recs.reserveCapacity(Int(n))
            for _ in 0..<n {
                let off = try r.u64()
                let stamp = try r.i64()
                recs.append(StreamRecord(offset: off, stampNanos: stamp, op: try op(r.u8()), key: try r.short()))
            }
            m = .stream(recs)
        case 0x24: m = .followerAck(applied: try r.u64())
        case 0x25: m = .ping(endOffset: try r.u64(), stampNanos: try r.i64())
        case 0x26: m = .followerAlive
        case 0x30: m = .peerInfo(active: try r.bool(), epoch: try r.u64(), runID: try r.u64())
        default: throw .malformed("unknown message type 0x\(String(type, radix: 16))")
        }
        try r.finish()
        return m
    }

    static func op(_ raw: UInt8) throws(JournalError) -> RecordOp {
        guard let op = RecordOp(rawValue: raw) else { throw .malformed("unknown record op \(raw)") }
        return op
    }
}
