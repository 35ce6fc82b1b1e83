/// Paces the tap's async journal shipments with a generic cell rate algorithm (GCRA, the
/// token bucket of ATM and of most rate limiters, kept as one timestamp).
///
/// Every shipment wakes the keeper, and the keeper's wake-up, read and decode, plus the tap's
/// own send, cost more CPU than proxying the write did. So a busy tap sends batches: about
/// one shipment per `interval`. A quiet tap ships at once, and so may a burst of up to
/// `burst` shipments after a quiet spell. The rule it replaces ("at once if nothing shipped
/// for 100 µs, else 200 µs after the last shipment") delayed any write that came within
/// 100 µs of another, which at 5k writes/s from four clients was a third of them.
struct ShipPacer: Sendable {
    /// The sustained spacing of shipments (ns).
    let interval: UInt64
    /// How far ahead of the sustained pace a burst may run (ns).
    let tolerance: UInt64
    /// When the next shipment would be due at the sustained pace (monotonic ns).
    private var theoretical: UInt64 = 0

    init(intervalNanos: UInt64, burst: UInt64) {
        interval = intervalNanos
        tolerance = intervalNanos * (max(burst, 1) - 1)
    }

    /// When records queued at `now` may ship (monotonic ns): `now` itself unless the tap
    /// has used up its burst.
    func due(now: UInt64) -> UInt64 {
        theoretical > tolerance ? max(now, theoretical - tolerance) : now
    }

    /// Books a shipment made at `now`. Another thread may book one stamped a little earlier
    /// than the last; the pace only ever moves forward.
    mutating func shipped(at now: UInt64) {
        theoretical = max(theoretical, now) + interval
    }
}
