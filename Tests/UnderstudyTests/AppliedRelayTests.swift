import Glibc
import JournalWire
import Testing
import UnderstudyPosix

/// The keeper tells a tap which of its records the follower applied only when the tap asked
/// (sync and strict taps): an async tap has nobody waiting, and the news would wake it about
/// a thousand times a second. Two raw taps against a real pair show both sides of that. And
/// an async tap's acks, which only free its buffer, are coalesced longer than a sync tap's.
@Suite("what the keeper tells a tap, by mode", .serialized)
struct AppliedRelayTests {
    @Test func onlyTheTapThatAskedHearsWhatWasApplied() throws {
        let h = try PairHarness()
        try h.waitCaughtUp()
        let quiet = try h.rawTap(id: "async-tap", wantsApplied: false)
        defer { quiet.close() }
        let asking = try h.rawTap(id: "sync-tap", wantsApplied: true)
        defer { asking.close() }

        // The async tap's record is journaled (acked) before the sync tap's, so by the time
        // the follower has applied the sync tap's record it has applied both. Every frame the
        // async tap gets is kept: a relay could come before the (coalesced) ack.
        try quiet.send(.records([TapRecord(seq: 1, op: .write, key: Array("relay-quiet".utf8))]))
        var heard = try frames(quiet, within: 5000) { $0 == .tapAck(seq: 1) }
        #expect(heard.last == .tapAck(seq: 1))
        try asking.send(.records([TapRecord(seq: 1, op: .write, key: Array("relay-asking".utf8))]))
        let answered = try frames(asking, within: 10_000) { if case .tapApplied = $0 { true } else { false } }
        #expect(answered.last == .tapApplied(seq: 1), "the sync tap hears that its record was applied")

        // Any relay to the async tap would have gone out by now, or with the one above; give
        // it a few keepalive periods to show up.
        heard += try frames(quiet, within: 3 * JournalTiming.keepaliveMs) { _ in false }
        let wrong = heard.filter { if case .tapApplied = $0 { true } else { false } }
        #expect(wrong.isEmpty, "the async tap was sent \(wrong)")
        #expect(heard.contains(.syncState(followerInSync: true)), "the async tap still hears the keepalive")
    }

    @Test func acksToAnAsyncTapAreCoalesced() throws {
        let h = try PairHarness()
        try h.waitCaughtUp()
        let tap = try h.rawTap(id: "coalesced", wantsApplied: false)
        defer { tap.close() }
        let start = Clock.monoNanos()
        for seq in 1...400 {
            try tap.send(.records([TapRecord(seq: UInt64(seq), op: .write, key: Array("coalesce-\(seq)".utf8))]))
            usleep(1000)
        }
        let heard = try frames(tap, within: 5000) { $0 == .tapAck(seq: 400) }
        let elapsedMs = Double(Clock.monoNanos() - start) / 1e6
        #expect(heard.last == .tapAck(seq: 400), "every record is still acknowledged")
        // Coalescing bounds the ack rate from above, so a slow machine only makes fewer: at
        // most one per `ackCoalesceMs` (10), plus the first, which goes at once. At a sync
        // tap's 2 ms this would be about five times as many.
        let acks = heard.filter { if case .tapAck = $0 { true } else { false } }.count
        #expect(Double(acks) <= elapsedMs / 10 + 3, "\(acks) acks in \(Int(elapsedMs)) ms")
    }

    @Test func aTapStartWithoutTheFlagIsATapThatWaits() throws {
        // What a tap from before the flag sends: type, then the id alone.
        let old: [UInt8] = [0x10, 0x00, 0x02] + Array("id".utf8)
        #expect(try Message.decode(old) == .tapStart(tapID: Array("id".utf8), wantsApplied: true))
        #expect(try Message.decode(old + [0]) == .tapStart(tapID: Array("id".utf8), wantsApplied: false))
        // True has one encoding, the absent byte; a 1 there is refused, not read as true.
        #expect(throws: JournalError.self) { try Message.decode(old + [1]) }
    }

    /// Every frame received until one matches `last` (included) or `ms` pass.
    private func frames(_ ch: JournalChannel, within ms: Int, until last: (Message) -> Bool) throws -> [Message] {
        let deadline = Clock.monoNanos() + UInt64(ms) * 1_000_000
        var seen: [Message] = []
        while Clock.monoNanos() < deadline {
            let left = Int((deadline - Clock.monoNanos()) / 1_000_000) + 1
            try ch.stream.socket.setIOTimeout(readMs: left, writeMs: 2000)
            let m: Message
            do { m = try ch.receive() } catch {
                if case .stream(.timeout) = error { break }
                throw error
            }
            seen.append(m)
            if last(m) { break }
        }
        return seen
    }
}
