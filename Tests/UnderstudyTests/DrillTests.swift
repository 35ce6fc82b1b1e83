import Foundation
import Glibc
import MemcacheClient
import MemcacheProtocol
import Testing
import UnderstudyCore
import UnderstudyPosix

/// The drill runner: Redis-replication-suite style fault injection against real processes on
/// loopback. Each drill starts a fresh pair (two memcacheds, keeper, follower, tap), runs a
/// workload through the tap that records every acknowledged write, injects one fault at a
/// random point, lets things settle, then checks the model against the nodes, `verify`, and
/// the exact number of full syncs.
///
/// `swift test --filter DrillTests` runs `DRILLS` drills (10 by default, the CI subset, cycling
/// through every kind); `DRILLS=50 DRILL_SEED=7 swift test --filter DrillTests` replays a run.
/// The partition drills put each node (memcached and daemon) in a network namespace of its
/// own and cut its link, so they need root, as CI has.
@Suite("failure drills", .serialized)
struct DrillTests {
    enum Kind: String, CaseIterable {
        /// kill -9 the active memcached under strict-mode writes: nothing acked may be missing
        /// on the passive, which is then promoted. Strict, not plain sync: a write whose value
        /// died with the active before the follower read it is refused in strict mode, while
        /// plain sync degrades to async and answers it (by design, counted by the tap).
        case activeMemcachedStrict = "kill-active-memcached/strict"
        /// the same in async mode: losses are allowed, but only inside the lag window.
        case activeMemcachedAsync = "kill-active-memcached/async"
        /// kill -9 the keeper mid-stream and restart it: new run id, exactly one more full sync.
        case keeper = "kill-keeper"
        /// kill -9 the keeper while the follower full syncs, and restart it: the sync under
        /// way finishes, the new run id asks for one more, so exactly two.
        case keeperFullSync = "kill-keeper/full-sync"
        /// kill -9 the follower mid-stream: it resumes from the backlog, no full sync.
        case followerStream = "kill-follower/stream"
        /// kill -9 the follower mid full sync: the restarted one full syncs exactly once.
        case followerFullSync = "kill-follower/full-sync"
        /// kill -9 the passive memcached and restart it empty: one more full sync.
        case passiveMemcached = "restart-passive-memcached"
        /// SIGSTOP the follower for 1.5 s (a stalled peer): the backlog covers it.
        case followerStall = "stall-follower"
        /// cut the passive node's link for 1–6 s under strict-mode writes, then heal: longer
        /// than 3 s and both ends drop the silent connection; either way the follower resumes
        /// from the backlog (no full sync) and nothing acked is missing.
        case partitionPassive = "partition-passive/strict"
        /// cut the active node off from the passive and from the tap for 1–6 s, then heal:
        /// writes in flight fail, records the keeper never got are resent, nothing is lost.
        case partitionActive = "partition-active/async"
    }

    struct Outcome {
        var acked = 0
        var lost = 0
        /// Async mode may lose the lag window; counted, and checked to be inside it.
        var asyncLost = 0
        var differences = 0
        var fullSyncs: UInt64 = 0
    }

    static let count = Int(ProcessInfo.processInfo.environment["DRILLS"] ?? "") ?? 10
    /// `DRILL_KINDS=partition-passive/strict,kill-keeper` runs only those kinds.
    static let kinds: [Kind] = {
        let wanted = (ProcessInfo.processInfo.environment["DRILL_KINDS"] ?? "").split(separator: ",").map(String.init)
        return wanted.isEmpty ? Kind.allCases : Kind.allCases.filter { wanted.contains($0.rawValue) }
    }()
    static let seed = UInt64(ProcessInfo.processInfo.environment["DRILL_SEED"] ?? "") ?? UInt64.random(in: 1...UInt64(UInt32.max))

    @Test func drills() throws {
        var rng = SeededRandom(Self.seed)
        var total = Outcome()
        var perKind: [String: Int] = [:]
        print("DRILLS \(Self.count) seed=\(Self.seed)")
        #expect(!Self.kinds.isEmpty, "DRILL_KINDS names no known kind; kinds: \(Kind.allCases.map(\.rawValue))")
        guard !Self.kinds.isEmpty else { return }
        for n in 0..<Self.count {
            let kind = Self.kinds[n % Self.kinds.count]
            let drillSeed = rng.next()
            let o = try Self.run(kind, seed: drillSeed)
            print("DRILL \(n + 1) \(kind.rawValue) seed=\(drillSeed) acked=\(o.acked) lost=\(o.lost) async_lost=\(o.asyncLost) differences=\(o.differences) full_syncs=\(o.fullSyncs)")
            total.acked += o.acked
            total.lost += o.lost
            total.asyncLost += o.asyncLost
            total.differences += o.differences
            total.fullSyncs += o.fullSyncs
            perKind[kind.rawValue, default: 0] += 1
        }
        print("DRILLS TOTAL drills=\(Self.count) acked=\(total.acked) lost_in_strict_mode=\(total.lost) lost_in_async_mode=\(total.asyncLost) differences=\(total.differences) full_syncs=\(total.fullSyncs) kinds=\(perKind.sorted { $0.key < $1.key })")
    }

    /// One drill. Every expectation is recorded with the drill's kind and seed, so a failure
    /// can be replayed.
    static func run(_ kind: Kind, seed: UInt64) throws -> Outcome {
        var rng = SeededRandom(seed)
        let tag = "\(kind.rawValue) seed=\(seed)"
        let strict = kind == .activeMemcachedStrict || kind == .partitionPassive
        let partition = kind == .partitionPassive || kind == .partitionActive
        let nodes = partition ? try NodeNamespaces() : nil
        defer { nodes?.tearDown() }
        let midFullSync = kind == .followerFullSync || kind == .keeperFullSync
        let h = try PairHarness(backlog: "64M", secret: partition ? "drill-secret-\(seed)" : nil,
                                startFollower: !midFullSync, tapMode: strict ? "strict" : "async", nodes: nodes)
        defer { h.stop() }
        var o = Outcome()
        if midFullSync {
            try h.active.prefill(150_000)
        } else {
            try h.waitCaughtUp(timeout: 60)
        }
        let load = Workload(tap: h.tapEndpoint, seed: rng.next())
        if midFullSync {
            try h.startFollower()
            let copying = waitUntil(30) { ((try? h.status("b").follower?.fullSyncProgress?.keys) ?? 0) > 0 }
            #expect(copying, "\(tag): the follower never started its full sync")
        }
        usleep(UInt32(100_000 + rng.next() % (midFullSync ? 200_000 : 800_000)))
        let faultAt = Clock.monotonicMs()
        var expectedFullSyncs: UInt64 = 1
        var checkVerify = true
        /// A kill meant to land mid full sync must find one running, or the drill tests nothing.
        func expectMidFullSync() {
            #expect((try? h.status("b").follower?.fullSyncProgress) != nil,
                    "\(tag): the full sync finished before the kill; the drill did not test what it says")
        }

        switch kind {
        case .activeMemcachedStrict, .activeMemcachedAsync:
            h.active.kill9()
            usleep(300_000)
            load.stop()
            checkVerify = false
        case .keeper, .keeperFullSync:
            if kind == .keeperFullSync { expectMidFullSync() }
            h.keeper!.kill9()
            usleep(UInt32(100_000 + rng.next() % 400_000))
            try h.startKeeper()
            expectedFullSyncs = 2
        case .followerStream:
            h.follower!.kill9()
            usleep(UInt32(100_000 + rng.next() % 400_000))
            try h.startFollower()
            expectedFullSyncs = 0
        case .followerFullSync:
            // The follower started on 150 k keys is copying them now; kill it part-way.
            expectMidFullSync()
            h.follower!.kill9()
            try h.startFollower()
        case .passiveMemcached:
            h.passive = try h.passive.restart()
            _ = waitUntil(30) { ((try? h.status("b").follower?.counters.fullSyncs) ?? 0) >= 2 }
            expectedFullSyncs = 2
        case .followerStall:
            try h.follower!.pause()
            usleep(1_500_000)
            h.follower!.resume()
        case .partitionPassive, .partitionActive:
            let node = kind == .partitionPassive ? "b" : "a"
            try nodes!.cut(node)
            let cutOff = (kind == .partitionPassive ? h.passive : h.active).endpoint
            #expect((try? MemcacheConnection(cutOff, connectTimeoutMs: 300)) == nil, "\(tag): \(cutOff) still reachable; nothing was partitioned")
            usleep(UInt32(1_000_000 + rng.next() % 5_000_000))
            try nodes!.heal(node)
        }
        if kind != .activeMemcachedStrict && kind != .activeMemcachedAsync {
            usleep(500_000)
            load.stop()
        }
        o.acked = load.model.acked

        if checkVerify {
            if partition {
                // Writes acked while the keeper was cut off wait in the tap's buffer until it
                // reconnects (with backoff, each try bounded by a 2 s connect timeout): settled
                // means they reached the keeper too, not only that the follower caught up with
                // what the keeper has.
                let journaled = UInt64(load.model.journaled)
                #expect(waitUntil(60) { ((try? h.status("a").keeper?.counters.records) ?? 0) >= journaled },
                        "\(tag): the tap never delivered the records it buffered during the partition")
            }
            try h.waitCaughtUp(timeout: 120)
            // The active never lost its memcached: every acked write is there, and the passive
            // is an exact copy of it.
            let onActive = try load.model.losses(on: h.active.endpoint)
            #expect(onActive.isEmpty, "\(tag): \(onActive.count) acked writes missing on the active")
            let onPassive = try load.model.losses(on: h.passive.endpoint)
            #expect(onPassive.isEmpty, "\(tag): \(onPassive.count) acked writes missing on the passive after settling")
            let (code, out) = try h.verify()
            o.differences = code == 0 ? 0 : max(1, Int(out.split(separator: " ").first { $0.hasPrefix("differences:") }?.dropFirst(12) ?? "1") ?? 1)
            #expect(code == 0, "\(tag): verify: \(out.prefix(2000))")
        } else {
            // The active memcached is gone. What the follower applied is what heartbeat would
            // fail over to: promote it, as the failover hook would have heartbeat do.
            _ = waitUntil(5) { ((try? h.status("b").follower?.lagRecords) ?? 1) == 0 }
            let lost = try load.model.losses(on: h.passive.endpoint)
            if strict {
                o.lost = lost.count
                #expect(lost.isEmpty, "\(tag): strict mode lost \(lost.count) acked writes, e.g. \(lost.prefix(5).map(\.key))")
            } else {
                // Async: RPO is the replication lag. Every loss must have been acked shortly
                // before the crash, never long before it.
                let window: Int64 = 2000
                o.asyncLost = lost.count
                let old = lost.filter { $0.ackedAtMs < faultAt - window }
                print("DRILL \(tag): async losses \(lost.count) (all acked within \(window) ms of the crash: \(old.isEmpty))")
                #expect(old.isEmpty, "\(tag): \(old.count) writes acked over \(window) ms before the crash were lost")
            }
        }
        // Counted before any promotion: a promoted node has no follower counters left.
        let fullSyncs = try h.status("b").follower?.counters.fullSyncs ?? 0
        o.fullSyncs = fullSyncs
        #expect(fullSyncs == expectedFullSyncs, "\(tag): \(fullSyncs) full syncs in the current follower, expected \(expectedFullSyncs)\n\(h.follower?.log.suffix(3000) ?? "")")
        if !checkVerify {
            let promoted = try h.control("b", "promote")
            #expect(try h.status("b").role == "active", "\(tag): promote said \(promoted)")
        }
        return o
    }
}
