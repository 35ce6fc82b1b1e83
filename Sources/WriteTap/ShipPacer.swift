/// Paces the tap's async journal shipments with a generic cell rate algorithm (GCRA, the
/// token bucket of ATM and of most rate limiters, kept as one timestamp), whose interval
/// adapts to the write rate.
///
/// Every shipment wakes the keeper, and the keeper's wake-up, read and decode, plus the tap's
/// own send, cost more CPU than proxying the write did: some 35 µs on these machines. So a
/// busy tap sends batches: about one shipment per `interval`. A quiet tap ships at once, and
/// so may a burst of up to `burst` shipments after a quiet spell.
///
/// The interval is chosen as NIC drivers choose their interrupt coalescing (ethtool's
/// adaptive `pkt-rate-low`/`rx-usecs-low`, `pkt-rate-high`/`rx-usecs-high`): each sample
/// period, the rate of records shipped picks it, short at low rates and long at high ones,
/// linearly in between. At low rates shipments are few whatever their spacing, so they can
/// afford to go promptly; at high rates a short interval costs the app server's CPU (the tap
/// runs beside the application) for lag nobody can use. Measured at 4 connections of
/// sets: 200 µs throughout held the tap to 0.93–0.97× twemproxy's throughput, 1 ms brought
/// it to 1.01–1.02×, and at 5k writes/s the 200 µs interval keeps lag p50 at 0.17 ms. (The
/// intervals in use, and why, are at `TapEmitter.shipModeration`.)
struct ShipPacer: Sendable {
    /// Rate thresholds (records/s) and the intervals (ns) they map to.
    struct Moderation: Sendable {
        var lowRate: Double, lowInterval: UInt64
        var highRate: Double, highInterval: UInt64

        func interval(atRate rate: Double) -> UInt64 {
            if rate <= lowRate { return lowInterval }
            if rate >= highRate { return highInterval }
            let f = (rate - lowRate) / (highRate - lowRate)
            return lowInterval + UInt64(f * Double(highInterval - lowInterval))
        }
    }

    let moderation: Moderation
    let burst: UInt64
    /// How long a rate sample spans (ns).
    let samplePeriod: UInt64
    /// The sustained spacing of shipments now (ns).
    private(set) var interval: UInt64
    /// When the next shipment would be due at the sustained pace (monotonic ns).
    private var theoretical: UInt64 = 0
    private var sampleStart: UInt64 = 0
    private var sampleRecords = 0

    init(_ moderation: Moderation, burst: UInt64, samplePeriodNanos: UInt64 = 10_000_000) {
        self.moderation = moderation
        self.burst = max(burst, 1)
        self.samplePeriod = samplePeriodNanos
        interval = moderation.lowInterval
    }

    /// A fixed interval.
    init(intervalNanos: UInt64, burst: UInt64) {
        self.init(Moderation(lowRate: 0, lowInterval: intervalNanos, highRate: 1, highInterval: intervalNanos), burst: burst)
    }

    /// When records queued at `now` may ship (monotonic ns): `now` itself unless the tap
    /// has used up its burst.
    func due(now: UInt64) -> UInt64 {
        let tolerance = interval * (burst - 1)
        return theoretical > tolerance ? max(now, theoretical - tolerance) : now
    }

    /// Books a shipment of `records` made at `now`. Another thread may book one stamped a
    /// little earlier than the last; the pace only ever moves forward.
    mutating func shipped(at now: UInt64, records: Int = 1) {
        theoretical = max(theoretical, now) + interval
        sampleRecords += records
        if sampleStart == 0 { sampleStart = now }
        guard now > sampleStart, now - sampleStart >= samplePeriod else { return }
        interval = moderation.interval(atRate: Double(sampleRecords) * 1e9 / Double(now - sampleStart))
        (sampleStart, sampleRecords) = (now, 0)
    }
}
