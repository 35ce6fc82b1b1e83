import JournalWire
import UnderstudyPosix

/// The active role: receives tap records, numbers them `(run id, offset)`, keeps the backlog,
/// streams it to the follower, and relays the follower's applied offset back to sync taps.
final class Keeper: Sendable {
    struct TapState {
        /// Highest tap sequence journaled for this tap id in this run.
        var lastSeq: UInt64 = 0
        /// (journal offset, tap seq) of the last record of recent batches, oldest first,
        /// for turning the follower's applied offset into this tap's applied seq.
        var marks: [(offset: UInt64, seq: UInt64)] = []
        var appliedSeq: UInt64 = 0
        /// When this tap's writer was last woken to ack journaled records (monotonic ns):
        /// acks only free the tap's buffer, so they are not worth a wake-up per batch.
        var lastAckWake: UInt64 = 0
    }

    struct State {
        var backlog: Backlog
        var taps: [BytesKey: TapState] = [:]
        /// The taps connected (welcomed) now.
        var tapLinks: [ObjectIdentifier: TapLink] = [:]
        var followerConnection: Socket?
        var followerLink: FollowerLink?
        var followerID = 0
        var followerApplied: UInt64 = 0
        var followerInSync = false
        var followerAddress = ""
        /// Monotonic time of the follower's last ack; it acks at least every 500 ms, so
        /// silence means a dead node or link even when TCP has not noticed.
        var followerLastAck: UInt64 = 0
        var stopping = false
        /// Handing over (see `handOver`): tap records are turned away, and follower acks wake
        /// waiters.
        var tapsClosed = false
        var counters = KeeperCounters()

        /// The follower has applied the journal to its end.
        var followerCaughtUp: Bool { followerApplied >= backlog.lastOffset }
    }

    /// The run a keeper continues, as Redis's PSYNC2 keeps its master's replication id: a
    /// node promoted from a follower holds that run's state through `offset`, so its journal
    /// goes on from `offset + 1`, and the peer it followed (the old keeper, now following in
    /// turn) resumes from the backlog instead of copying everything again, if it holds exactly
    /// that state: the same run, ended at the same offset (a switchover that handed the
    /// journal over). Anything else full syncs as before.
    struct Lineage: Sendable, Equatable {
        var runID: UInt64
        var offset: UInt64
    }

    let runID: UInt64
    let epoch: UInt64
    let lineage: Lineage?
    let state: Monitor<State>
    /// Called when a peer shows an epoch above ours: this keeper is stale and must step down.
    let onHigherEpoch: @Sendable (UInt64) -> Void

    init(backlogBytes: Int, epoch: UInt64, continuing lineage: Lineage? = nil,
         onHigherEpoch: @escaping @Sendable (UInt64) -> Void = { _ in }) {
        var g = SystemRandomNumberGenerator()
        self.runID = UInt64.random(in: 1...UInt64.max >> 1, using: &g)
        self.epoch = epoch
        self.lineage = lineage
        self.onHigherEpoch = onHigherEpoch
        var s = State(backlog: Backlog(limitBytes: backlogBytes, firstOffset: (lineage?.offset ?? 0) + 1))
        // The continued run's records are on the peer already: they came from it.
        s.followerApplied = lineage?.offset ?? 0
        self.state = Monitor(s)
    }

    /// Records no follower has applied: what only this node accepted. Also how many such
    /// records already fell out of the backlog (their keys are unknown).
    func orphans() -> (records: [StreamRecord], lost: UInt64) {
        state.withLock { s in
            let from = max(s.followerApplied, lineage?.offset ?? 0) + 1
            let lost = s.backlog.firstOffset > from ? s.backlog.firstOffset - from : 0
            let recs = s.backlog.read(from: max(from, s.backlog.firstOffset), max: Int.max) ?? []
            return (recs, lost)
        }
    }

    /// Stops journaling, then lets an in-sync follower apply the journal to its end for as
    /// long as it makes progress (`stallMs` without an ack that moves, `timeoutMs` in all);
    /// true if it did. In a planned switchover the cluster manager takes the VIP away first,
    /// so the records still in flight are the last few milliseconds' worth; without this they
    /// went to the recovery file (acknowledged writes missing on the new active until an
    /// operator replays them), and now they reach the peer. A fixed 2 s wait cut short a
    /// follower with a burst to apply on a loaded machine; one that stops acking is stuck,
    /// and is not waited for. Taps stay connected meanwhile and hear what the follower
    /// applies, so a sync write in flight is answered as replicated; a record a tap sends now
    /// is neither journaled nor acknowledged, and the tap resends it to the next keeper.
    func handOver(timeoutMs: Int, stallMs: Int) -> Bool {
        state.update { $0.tapsClosed = true }
        _ = state.wait(until: { s in s.followerConnection == nil || !s.followerInSync || s.followerCaughtUp },
                       progressing: { $0.followerApplied }, stallMs: stallMs, timeoutMs: timeoutMs)
        return state.withLock { $0.followerCaughtUp }
    }

    func stop() {
        let follower = state.update { s -> Socket? in
            s.stopping = true
            return s.followerConnection
        }
        follower?.shutdown()
    }

    /// Undoes `stop` when a demotion is abandoned: the run, its backlog and tap positions stay.
    func resume() {
        state.update { s in
            s.stopping = false
            s.tapsClosed = false
        }
    }

    var snapshot: KeeperStatus {
        state.withLock { s in
            KeeperStatus(runID: String(runID, radix: 16), endOffset: s.backlog.lastOffset, backlogFirstOffset: s.backlog.firstOffset,
                         backlogRecords: s.backlog.count, backlogBytes: s.backlog.bytes, backlogLimitBytes: s.backlog.limitBytes,
                         tapsConnected: s.tapLinks.count, followerConnected: s.followerConnection != nil,
                         followerAddress: s.followerAddress, followerApplied: s.followerApplied, followerInSync: s.followerInSync,
                         counters: s.counters)
        }
    }
}
