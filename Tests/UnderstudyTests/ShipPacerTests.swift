import Testing
@testable import WriteTap

/// The async journal pace: a quiet tap ships at once, a burst may run ahead of the sustained
/// pace by `burst` shipments, and a busy tap settles at one shipment per interval.
@Suite("journal shipment pacing (no sockets)")
struct ShipPacerTests {
    static let us: UInt64 = 1000
    static let start: UInt64 = 1_000_000_000

    @Test func quietTapShipsAtOnce() {
        var p = ShipPacer(intervalNanos: 200 * Self.us, burst: 4)
        var now = Self.start
        // One shipment every 300 µs stays under the pace: never delayed.
        for _ in 0..<100 {
            #expect(p.due(now: now) == now)
            p.shipped(at: now)
            now += 300 * Self.us
        }
    }

    @Test func burstThenSustainedPace() {
        var p = ShipPacer(intervalNanos: 200 * Self.us, burst: 4)
        let now = Self.start
        // Four shipments at the same instant are allowed; the fifth waits one interval
        // past the burst's start.
        for _ in 0..<4 {
            #expect(p.due(now: now) == now)
            p.shipped(at: now)
        }
        #expect(p.due(now: now) == now + 200 * Self.us)
        // Flat out from there: each shipment made when due makes the next due one interval on.
        var t = p.due(now: now)
        for _ in 0..<50 {
            p.shipped(at: t)
            let next = p.due(now: t)
            #expect(next == t + 200 * Self.us)
            t = next
        }
    }

    @Test func writesCloseTogetherAfterAQuietSpellAreNotDelayed() {
        // The rule this replaced held back any write within 100 µs of the last shipment.
        var p = ShipPacer(intervalNanos: 200 * Self.us, burst: 4)
        var now = Self.start
        p.shipped(at: now)
        now += 50 * Self.us
        #expect(p.due(now: now) == now)
        p.shipped(at: now)
        now += 50 * Self.us
        #expect(p.due(now: now) == now)
    }

    @Test func aShipmentStampedEarlierByAnotherThreadNeverMovesThePaceBack() {
        var p = ShipPacer(intervalNanos: 200 * Self.us, burst: 1)
        p.shipped(at: Self.start + 1000 * Self.us)
        p.shipped(at: Self.start)
        #expect(p.due(now: Self.start) == Self.start + 1400 * Self.us)
    }

    @Test func burstOfOneIsAStrictPace() {
        var p = ShipPacer(intervalNanos: 200 * Self.us, burst: 1)
        #expect(p.due(now: Self.start) == Self.start)
        p.shipped(at: Self.start)
        #expect(p.due(now: Self.start + 10 * Self.us) == Self.start + 200 * Self.us)
        #expect(p.due(now: Self.start + 250 * Self.us) == Self.start + 250 * Self.us)
    }
}
