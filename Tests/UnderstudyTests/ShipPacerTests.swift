import Testing
@testable import WriteTap

/// The async journal pace: a quiet tap ships at once, a burst may run ahead of the sustained
/// pace by `burst` shipments, a busy tap settles at one shipment per interval, and the
/// interval follows the rate of records.
@Suite("journal shipment pacing (no sockets)")
struct ShipPacerTests {
    static let us: UInt64 = 1000
    static let start: UInt64 = 1_000_000_000

    static func pacer(burst: UInt64) -> ShipPacer { ShipPacer(intervalNanos: 200 * us, burst: burst) }

    /// Expects records queued at `now` to be due at once, and ships them then.
    static func shipsAtOnce(_ p: inout ShipPacer, at now: UInt64, sourceLocation: SourceLocation = #_sourceLocation) {
        #expect(p.due(now: now) == now, sourceLocation: sourceLocation)
        p.shipped(at: now)
    }

    @Test func quietTapShipsAtOnce() {
        var p = Self.pacer(burst: 4)
        // One shipment every 300 µs stays under the pace: never delayed.
        for i in 0..<UInt64(100) { Self.shipsAtOnce(&p, at: Self.start + i * 300 * Self.us) }
    }

    @Test func burstThenSustainedPace() {
        var p = Self.pacer(burst: 4)
        let now = Self.start
        // Four shipments at the same instant are allowed; the fifth waits one interval
        // past the burst's start.
        for _ in 0..<4 { Self.shipsAtOnce(&p, at: now) }
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
        var p = Self.pacer(burst: 4)
        p.shipped(at: Self.start)
        Self.shipsAtOnce(&p, at: Self.start + 50 * Self.us)
        #expect(p.due(now: Self.start + 100 * Self.us) == Self.start + 100 * Self.us)
    }

    @Test func aShipmentStampedEarlierByAnotherThreadNeverMovesThePaceBack() {
        var p = Self.pacer(burst: 1)
        p.shipped(at: Self.start + 1000 * Self.us)
        p.shipped(at: Self.start)
        #expect(p.due(now: Self.start) == Self.start + 1400 * Self.us)
    }

    /// Ships every millisecond for `ms` milliseconds, `perMs` records each time.
    static func ship(_ p: inout ShipPacer, perMs: Int, for ms: Int, from t: inout UInt64) {
        for _ in 0..<ms {
            p.shipped(at: t, records: perMs)
            t += 1000 * us
        }
    }

    /// Each sample period's rate of records sets the interval: short at low rates, long at
    /// high ones, linear in between, and back down when the rate falls.
    @Test func theIntervalFollowsTheRateOfRecords() {
        let m = ShipPacer.Moderation(lowRate: 10_000, lowInterval: 200 * Self.us, highRate: 40_000, highInterval: 1000 * Self.us)
        var p = ShipPacer(m, burst: 4, samplePeriodNanos: 10_000 * Self.us)
        var t = Self.start
        #expect(p.interval == 200 * Self.us)
        Self.ship(&p, perMs: 5, for: 30, from: &t)  // 5k records/s
        #expect(p.interval == 200 * Self.us)
        Self.ship(&p, perMs: 80, for: 30, from: &t)  // 80k/s
        #expect(p.interval == 1000 * Self.us)
        // A busy tap is paced at the long interval once its burst is spent.
        for _ in 0..<4 { Self.shipsAtOnce(&p, at: t) }
        #expect(p.due(now: t) == t + 1000 * Self.us)
        t += 1000 * Self.us
        Self.ship(&p, perMs: 25, for: 30, from: &t)  // 25k/s, halfway between the thresholds
        #expect(p.interval == 600 * Self.us)
        Self.ship(&p, perMs: 5, for: 30, from: &t)
        #expect(p.interval == 200 * Self.us)
        #expect(p.due(now: t + 1000 * Self.us) == t + 1000 * Self.us)
    }

    @Test func burstOfOneIsAStrictPace() {
        var p = Self.pacer(burst: 1)
        Self.shipsAtOnce(&p, at: Self.start)
        #expect(p.due(now: Self.start + 10 * Self.us) == Self.start + 200 * Self.us)
        #expect(p.due(now: Self.start + 250 * Self.us) == Self.start + 250 * Self.us)
    }
}
