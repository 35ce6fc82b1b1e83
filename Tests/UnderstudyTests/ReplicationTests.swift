import Foundation
import MemcacheClient
import MemcacheProtocol
import Testing
import UnderstudyCore
import UnderstudyPosix

@Suite("replication end to end (processes of the built binary)", .serialized)
struct ReplicationTests {
    @Test func hundredThousandMixedKeysVerifyClean() throws {
        let h = try PairHarness()
        let now = Clock.unixSeconds()
        var g = SystemRandomNumberGenerator()
        let sizes: [Int] = (0..<100_000).map { i in
            if i % 1000 == 7 { return Int.random(in: 100_000...(512 << 10), using: &g) }
            if i % 20 == 3 { return Int.random(in: 1024...16384, using: &g) }
            return Int.random(in: 10...200, using: &g)
        }
        try h.write(0..<100_000, prefix: "mix", value: { i in [UInt8](repeating: UInt8(truncatingIfNeeded: i), count: sizes[i]) },
                    flags: { "F\(($0 &* 2654435761) % 4_294_967_296)" },
                    ttl: { i in i % 3 == 0 ? "T0" : i % 3 == 1 ? "T3600" : "T\(now + 40 * 86400)" })
        try h.waitCaughtUp()
        let (code, out) = try h.verify()
        #expect(code == 0, "verify: \(out)")
        #expect(out.contains("compared:100000 differences:0"), "verify: \(out)")
        let f = try #require(try h.status("b").follower)
        #expect(f.counters.fullSyncs == 1)
        #expect(f.counters.gaps == 0)
    }

    @Test func deletesTouchesFlushAndBinaryKeysReplicate() throws {
        let h = try PairHarness()
        let c = try MemcacheConnection(h.tapEndpoint)
        let b = try h.passive.connect()
        try h.write(0..<200, prefix: "d")
        #expect(try c.delete(Array("d5".utf8)))
        #expect(try c.touch(Array("d6".utf8), exptime: 5000))
        let bin: [UInt8] = [0xff, 0x00, 0x20, 0x0d, 0x0a, 0x41]
        #expect(try c.meta(.set(bin, [1, 2, 3], ["F9", "T0"])).status == .hd)
        let forty = Clock.unixSeconds() + 40 * 86400
        #expect(try c.set(Array("forty".utf8), [7], flags: 1, exptime: forty) == .stored)
        try h.waitCaughtUp()
        #expect(try b.get(Array("d5".utf8)) == nil)
        let t = try b.meta(.get(Array("d6".utf8), ["t"])).intFlag("t") ?? -1
        #expect(t > 4990 && t <= 5000, "touch TTL on passive: \(t)")
        #expect(try b.meta(.get(bin, ["v", "f"])).value == [1, 2, 3])
        let t40 = try b.meta(.get(Array("forty".utf8), ["t"])).intFlag("t") ?? -1
        #expect(abs(t40 - 40 * 86400) <= 3, "40-day TTL on passive: \(t40)")
        #expect(try h.verify().0 == 0)
        try c.flushAll()
        try h.write(0..<3, prefix: "after")
        try h.waitCaughtUp()
        #expect(try b.get(Array("d7".utf8)) == nil)
        #expect(try b.get(Array("after1".utf8))?.value == Array("value-1".utf8))
        let f = try #require(try h.status("b").follower)
        #expect(f.counters.flushes == 1)
    }

    /// Replication's reads must not count as the application's on the active: a fetched mark
    /// on every item would promote once-read items into the warm LRU and zero the
    /// `evicted_unfetched` an operator sizes memory by. Full sync, streaming and verify all
    /// read the active here; `mg u h` (which itself leaves the item alone) must still say
    /// never fetched, and does say fetched for a key the test reads as an app would.
    @Test func replicationAndVerifyLeaveTheActivesItemsUnfetched() throws {
        let h = try PairHarness(startFollower: false)
        try h.active.prefill(300)
        try h.startFollower()
        try h.write(0..<300, prefix: "w")
        try h.waitCaughtUp()
        let (code, out) = try h.verify()
        #expect(code == 0, "verify: \(out)")
        let a = try h.active.connect()
        defer { a.close() }
        _ = try a.get(Array("w7".utf8))
        let keys = (0..<300).flatMap { [Array("pre\($0)".utf8), Array("w\($0)".utf8)] }
        let replies = try a.pipeline(keys.map { MetaRequest.peek($0, ["h"]) })
        let fetched = zip(keys, replies).filter { $0.1.intFlag("h") != 0 }.map { String(decoding: $0.0, as: UTF8.self) }
        #expect(replies.allSatisfy { $0.status == .hd })
        #expect(fetched == ["w7"], "items marked fetched on the active: \(fetched.prefix(5)) (\(fetched.count))")
        let f = try #require(try h.status("b").follower)
        #expect(f.counters.keysCopied >= 600)
    }

    /// Any `mg` of a stale item (`md k I`) takes the right to recache it, `u` or not, and
    /// every read after it is told `Z` (someone else is recaching) until the stale TTL runs
    /// out. Full sync, streaming and verify all read stale items on the active here; the
    /// app's first read after them must still win (`W`). The copy is stale too, so after a
    /// failover the first read on the passive recaches; so is the copy of a placeholder
    /// `mg k N` made, which would otherwise read there as an empty value.
    @Test func staleItemsCopyStaleAndLeaveTheRecacheTokenToTheApp() throws {
        let h = try PairHarness(startFollower: false)
        try h.active.prefill(10)
        let a = try h.active.connect()
        defer { a.close() }
        #expect(try a.meta(.delete(Array("pre3".utf8), ["I", "T60"])).status == .hd)  // stale before the full sync
        try h.startFollower()
        try h.write(0..<10, prefix: "s")
        let c = try MemcacheConnection(h.tapEndpoint)
        defer { c.close() }
        #expect(try c.meta(.delete(Array("s4".utf8), ["I", "T60"])).status == .hd)  // through the tap: streamed
        #expect(try c.meta(.get(Array("vivified".utf8), ["N60", "v"])).wonToken)  // a placeholder, journaled
        try h.waitCaughtUp()
        let (code, out) = try h.verify()
        #expect(code == 0 && out.contains("stale:0"), "verify: \(out)")
        let b = try h.passive.connect()
        defer { b.close() }
        func shown(_ r: MetaReply) -> String { r.flags.map { String(decoding: $0, as: UTF8.self) }.joined(separator: " ") }
        for key in ["pre3", "s4", "vivified"] {
            let onActive = try a.meta(.get(Array(key.utf8), ["v"]))
            if key == "vivified" {
                #expect(onActive.flag("Z") != nil, "the placeholder's token is the app's: \(shown(onActive))")
            } else {
                #expect(onActive.isStale && onActive.wonToken, "\(key) on the active: \(shown(onActive))")
            }
            let onPassive = try b.meta(.get(Array(key.utf8), ["v", "t"]))
            #expect(onPassive.isStale && onPassive.wonToken, "\(key) on the passive: \(shown(onPassive))")
            #expect((50...60).contains(onPassive.intFlag("t") ?? -1), "\(key) stale TTL on the passive: \(shown(onPassive))")
        }
        let fresh = try b.meta(.get(Array("s5".utf8), ["v"]))
        #expect(fresh.status == .va && !fresh.isStale, "s5 on the passive: \(shown(fresh))")
    }

    /// Replication only writes the passive, so its LRU is the order of writes: with both
    /// memcacheds full it evicted its oldest writes, the long-lived keys the app reads most,
    /// which the active kept. The LRU pass marks on the passive what the app reads on the
    /// active (`LRUWarmer`); with `--lru-sync-interval 0` this test fails (0 of 300 kept).
    @Test func thePassiveKeepsTheKeysTheAppReadsWhenBothAreFull() throws {
        let h = try PairHarness(activeMemoryMB: 8, followerArgs: ["--on-active-failure", "none", "--lru-sync-interval", "1"])
        let value = { (_: Int) in [UInt8](repeating: 0x68, count: 4000) }
        try h.write(0..<300, prefix: "hot", value: value)
        let a = try h.active.connect()
        defer { a.close() }
        let hot = (0..<300).map { Array("hot\($0)".utf8) }
        // 16 MiB of other writes through 8 MiB memcacheds, the app reading its hot keys.
        for round in 0..<40 {
            try h.write((round * 100)..<(round * 100 + 100), prefix: "cold", value: value)
            _ = try a.pipeline(hot.map { MetaRequest.get($0, ["v"]) })
            usleep(100_000)
        }
        try h.waitCaughtUp()
        let onActive = try a.pipeline(hot.map { MetaRequest.peek($0, []) }).filter(\.isHit).count
        try #require(onActive == 300, "the active itself kept \(onActive) of the 300 hot keys")
        let b = try h.passive.connect()
        defer { b.close() }
        let onPassive = try b.pipeline(hot.map { MetaRequest.peek($0, []) }).filter(\.isHit).count
        #expect(onPassive == 300, "the passive kept \(onPassive) of the 300 hot keys")
        let f = try #require(try h.status("b").follower)
        #expect(f.counters.lruPasses >= 1 && f.counters.keysWarmed >= 300, "\(f.counters)")
    }

    /// Keys the active evicted stay on the passive (here, with four times the memory, it
    /// evicts nothing), where they would take the room the active's keys need. The LRU pass
    /// deletes them; with the trim left out, verify finds thousands only on the passive.
    @Test func lruPassesDeleteFromThePassiveWhatTheActiveEvicted() throws {
        let h = try PairHarness(activeMemoryMB: 8, passiveMemoryMB: 32,
                                followerArgs: ["--on-active-failure", "none", "--lru-sync-interval", "1"])
        try h.write(0..<5000, prefix: "e", value: { _ in [UInt8](repeating: 0x65, count: 4000) })
        try h.waitCaughtUp()
        let passes = try #require(try h.status("b").follower).counters.lruPasses
        #expect(waitUntil(30) { ((try? h.status("b").follower?.counters.lruPasses) ?? 0) >= passes + 2 })
        let f = try #require(try h.status("b").follower)
        #expect(f.counters.keysTrimmed > 1000, "\(f.counters)")
        let (code, out) = try h.verify()
        #expect(code == 0 && out.contains("only_on_passive:0"), "verify: \(out)")
    }

    @Test func followerRestartResumesFromTheBacklog() throws {
        let h = try PairHarness()
        try h.write(0..<5000, prefix: "r")
        try h.waitCaughtUp()
        // Kill mid-stream: writes are flowing while the follower dies.
        let writer = Thread { _ = try? h.write(5000..<25_000, prefix: "r") }
        writer.start()
        usleep(100_000)
        h.follower!.kill9()
        while writer.isExecuting || !writer.isFinished { usleep(20_000) }
        try h.startFollower()
        try h.waitCaughtUp()
        let f = try #require(try h.status("b").follower)
        #expect(f.counters.fullSyncs == 0, "resume must not full sync: \(h.follower!.log)")
        #expect(f.counters.partialResyncs == 1)
        let (code, out) = try h.verify()
        #expect(code == 0, "\(out)")
    }

    @Test func followerRestartBeyondTheBacklogFullSyncsExactlyOnce() throws {
        let h = try PairHarness(backlog: "64K")
        try h.write(0..<1000, prefix: "s")
        try h.waitCaughtUp()
        h.follower!.stop()
        try h.write(1000..<20_000, prefix: "s")  // far more than 64 KiB of records
        try h.startFollower()
        try h.waitCaughtUp()
        let f = try #require(try h.status("b").follower)
        #expect(f.counters.fullSyncs == 1)
        #expect(f.counters.partialResyncs == 0)
        #expect(f.lastFullSync?.reason.contains("backlog") == true, "reason: \(f.lastFullSync?.reason ?? "-")")
        let (code, out) = try h.verify()
        #expect(code == 0, "\(out)")
    }

    @Test func passiveMemcachedRestartTriggersFullSync() throws {
        let h = try PairHarness()
        try h.write(0..<3000, prefix: "p")
        try h.waitCaughtUp()
        h.passive = try h.passive.restart()
        #expect(waitUntil(30) { ((try? h.status("b").follower?.counters.fullSyncs) ?? 0) >= 2 })
        try h.waitCaughtUp()
        let (code, out) = try h.verify()
        #expect(code == 0, "\(out)")
        #expect(h.follower!.log.contains("local memcached restarted"))
    }

    /// Writes a few milliseconds apart stream one frame at a time, which the follower's
    /// stream reader copies itself (`Follower.readStream`). The passive memcached restarting
    /// under it fails those copies; they must reach the applier and land after all.
    @Test func singleWritesWhileThePassiveMemcachedRestartsAllArrive() throws {
        let h = try PairHarness()
        try h.write(0..<100, prefix: "s")
        try h.waitCaughtUp()
        h.passive = try h.passive.restart()
        for i in 0..<50 {
            try h.write(i..<(i + 1), prefix: "r")
            usleep(20_000)
        }
        try h.waitCaughtUp()
        let (code, out) = try h.verify()
        #expect(code == 0, "\(out)")
        let c = try MemcacheConnection(h.passive.endpoint)
        defer { c.close() }
        for i in [0, 25, 49] {
            #expect(try c.get(Array("r\(i)".utf8))?.value == Array("value-\(i)".utf8))
        }
    }

    @Test func aFullSyncTheActiveRefusesBacksOffQuietly() throws {
        // Full sync lists keys with `lru_crawler metadump`, which this memcached refuses.
        let h = try PairHarness(activeMemcachedArgs: ["-o", "no_lru_crawler"])
        #expect(waitUntil(10) { (try? h.status("b").follower?.lastError)??.contains("lru crawler disabled") == true },
                "the operator sees why: \(h.follower!.log.suffix(2000))")
        // Each attempt opens about ten connections to the active memcached (its stats, the
        // metadump, the copiers). Backed off (by now to the 2 s ceiling), 6 s hold three or
        // four attempts: 36 connections measured. Retrying every 100 ms, as a reset after
        // each connect did: 342, and 58 warnings.
        let stats = try MemcacheConnection(h.active.endpoint, ioTimeoutMs: 5000)
        defer { stats.close() }
        let connections = { Int(try stats.stats()["total_connections"] ?? "") ?? 0 }
        let before = try connections()
        usleep(6_000_000)
        let made = try connections() - before
        #expect(made <= 100, "\(made) connections to the active memcached in 6 s of retrying")
        let warnings = h.follower!.log.components(separatedBy: "lru crawler disabled").count - 1
        #expect(warnings <= 2, "the same failure is logged once, not per retry:\n\(h.follower!.log.suffix(3000))")
    }

    @Test func fullSyncOfAMillionKeysWhileWritesContinue() throws {
        let h = try PairHarness(startFollower: false, activeMemoryMB: 1024)
        // Pre-fill the active directly (not journaled): only a full sync can copy these.
        try h.active.prefill(1_000_000)
        let stale = try h.passive.connect()
        try stale.set(Array("stale-only-on-passive".utf8), [1])
        let writer = Thread { _ = try? h.write(0..<30_000, prefix: "live") }
        writer.start()
        try h.startFollower()
        while !writer.isFinished { usleep(20_000) }
        try h.waitCaughtUp(timeout: 300)
        let f = try #require(try h.status("b").follower)
        #expect(f.counters.fullSyncs == 1)
        let report = try #require(f.lastFullSync)
        #expect(report.keys >= 1_000_000)
        let (code, out) = try h.verify()
        #expect(code == 0, "\(out)")
        #expect(out.contains("differences:0"))
        #expect(try stale.get(Array("stale-only-on-passive".utf8)) == nil)
    }

    /// A sync-mode write waiting for the follower when the keeper vanishes (as when the
    /// active node crashes: the memcached that said STORED may be gone too) is refused, not
    /// degraded; a write sent once the tap knows the keeper is gone degrades as before.
    @Test func syncWriteWaitingWhenTheKeeperDiesIsRefused() throws {
        let h = try PairHarness(tapMode: "sync")
        try h.waitCaughtUp()
        let c = try MemcacheConnection(h.tapEndpoint, ioTimeoutMs: 10_000)
        #expect(try c.set(Array("before".utf8), [1]) == .stored)
        try h.follower!.pause()
        defer { h.follower!.resume() }
        let outcome = setInBackground(h.tapEndpoint, "in-flight", [2])
        usleep(300_000)
        #expect(outcome.withLock { $0 } == nil, "the write must be waiting for the stopped follower")
        h.keeper!.kill9()
        #expect(waitUntil(10) { outcome.withLock { $0 } != nil })
        let got = outcome.withLock { $0 } ?? "no answer"
        #expect(got.contains("refused") && got.contains("keeper connection lost"), "\(got)")
        // The keeper is known gone now: the next write degrades to async and is answered.
        let c2 = try MemcacheConnection(h.tapEndpoint, ioTimeoutMs: 10_000)
        #expect(try c2.set(Array("after".utf8), [3]) == .stored)
    }

    /// A keeper that dies with its link cut sends no FIN: the tap hears only silence. A sync
    /// write must not be answered as stored then (the write may exist nowhere), so it is
    /// refused once the keeper's keepalives stop, and nothing is lost: after the keeper comes
    /// back the tap resends the record and the follower applies the write.
    @Test func syncWriteIsRefusedWhenTheKeeperFallsSilent() throws {
        let h = try PairHarness(tapMode: "sync")
        try h.waitCaughtUp()
        let keeper = h.keeper!
        try keeper.pause()  // alive, connections open, silent: what a cut link looks like
        var resumed = false
        defer { if !resumed { keeper.resume() } }
        let outcome = setInBackground(h.tapEndpoint, "unheard", [7])
        #expect(waitUntil(10) { outcome.withLock { $0 } != nil })
        let got = outcome.withLock { $0 } ?? "no answer"
        #expect(got.contains("refused") && got.contains("not replicated"), "\(got)")
        keeper.resume()
        resumed = true
        let passive = try h.passive.connect()
        #expect(waitUntil(20) { (try? passive.get(Array("unheard".utf8)))??.value == [7] },
                "the refused write stands on the active and must still reach the passive")
        let c = try MemcacheConnection(h.tapEndpoint, ioTimeoutMs: 10_000)
        #expect(waitUntil(20) { (try? c.set(Array("heard".utf8), [8])) == .stored })
    }

    /// A set through the tap on its own thread; the result reads "answered …" or "refused: …".
    private func setInBackground(_ tap: Endpoint, _ key: String, _ value: [UInt8]) -> Monitor<String?> {
        let outcome = Monitor<String?>(nil)
        Thread {
            do {
                let r = try MemcacheConnection(tap, ioTimeoutMs: 10_000).set(Array(key.utf8), value)
                outcome.update { $0 = "answered \(r)" }
            } catch {
                outcome.update { $0 = "refused: \(error)" }
            }
        }.start()
        return outcome
    }

    @Test func statusAndMetricsTellTheTruth() throws {
        let h = try PairHarness()
        try h.write(0..<100, prefix: "m")
        try h.waitCaughtUp()
        let a = try h.status("a")
        let b = try h.status("b")
        #expect(a.role == "active" && b.role == "passive")
        #expect(a.epoch == 1)
        #expect(a.keeper?.endOffset == 100)
        #expect(a.keeper?.followerInSync == true)
        #expect(b.follower?.appliedOffset == 100 && b.follower?.lagRecords == 0)
        #expect(b.follower?.keeperRunID == a.keeper?.runID)
        let text = try runTool(Paths.understudy, ["status", "--control", h.dir + "/b.sock"])
        #expect(text.contains("role:passive") && text.contains("applied_offset:100") && text.contains("in_sync:true"))
        var st = stat()
        #expect(stat(h.dir + "/a.sock", &st) == 0 && st.st_mode & 0o777 == 0o600)
    }
}
