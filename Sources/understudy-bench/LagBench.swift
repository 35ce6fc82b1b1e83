import Foundation
import MemcacheClient
import UnderstudyPosix

/// Streaming replication lag through the tap, at fixed rates and flat out, against Redis 7
/// replication under the same rates and value size; and how fast the follower can apply.
enum LagBench {
    static let rates: [Double] = [5000, 20000, 50000]

    static func run(runs: Int, seconds: Double, table: Table) throws {
        let pair = try BenchPair.replicating()
        defer { pair.stop() }
        let tapEP = pair.tapEP!, dstEP = pair.dstEP
        let redis = try RedisPair()
        defer { redis?.stop() }

        // LAG_RATES=50000,0 narrows the run to those rates (0: flat out), without the
        // capacity part (A/B comparisons).
        let only = ProcessInfo.processInfo.environment["LAG_RATES"]?.split(separator: ",").compactMap { Double($0) }
        for rate in only ?? rates + [0] {
            var p50 = Figure(), p99 = Figure(), mx = Figure(), achieved = Figure()
            var r50 = Figure(), r99 = Figure(), rmax = Figure()
            let name = rate == 0 ? "lag at tap max rate" : "lag at \(Int(rate / 1000))k writes/s"
            for r in 1...runs {
                let run = try lagRun(writer: { try MemcacheKV(tapEP) }, replica: { try MemcacheKV(dstEP) },
                                     rate: rate, threads: 4, seconds: seconds, probeEvery: 20, prefix: "lag\(Int(rate))r\(r)")
                p50.values.append(percentile(run.lagsMs, 0.5))
                p99.values.append(percentile(run.lagsMs, 0.99))
                mx.values.append(run.lagsMs.max() ?? .nan)
                achieved.values.append(run.achievedRate)
                log("\(name) run \(r): \(fmt(run.achievedRate)) writes/s, lag p50 \(fmt(p50.values.last!)) ms p99 \(fmt(p99.values.last!)) ms, \(run.lagsMs.count) probes, \(run.timeouts) timeouts")
                if let redis {
                    let (m, rep) = (redis.masterEP, redis.replicaEP)
                    let rr = try lagRun(writer: { try RedisKV(m) }, replica: { try RedisKV(rep) },
                                        rate: rate == 0 ? run.achievedRate : rate, threads: 4, seconds: seconds, probeEvery: 20,
                                        prefix: "rlag\(Int(rate))r\(r)")
                    r50.values.append(percentile(rr.lagsMs, 0.5))
                    r99.values.append(percentile(rr.lagsMs, 0.99))
                    rmax.values.append(rr.lagsMs.max() ?? .nan)
                    log("redis at \(fmt(rr.achievedRate)) writes/s: lag p50 \(fmt(r50.values.last!)) ms p99 \(fmt(r99.values.last!)) ms")
                }
            }
            table.add(name, "achieved writes/s", achieved)
            table.add(name, "lag p50 ms", p50, baseline: "redis \(fmt(r50.median))", ratio: p50.median / r50.median, goal: "ratio ≤ 1")
            table.add(name, "lag p99 ms", p99, baseline: "redis \(fmt(r99.median))", ratio: p99.median / r99.median,
                      goal: rate == 20000 ? "≤ 2 ms, ratio ≤ 1" : "ratio ≤ 1")
            table.add(name, "lag max ms", mx, baseline: "redis \(fmt(rmax.median))", ratio: mx.median / rmax.median)
        }

        if only != nil { return }
        // Follower capacity: stop it, journal a burst through the tap, restart it (a partial
        // resync from the backlog) and time the catch-up.
        var tapMax = Figure(), apply = Figure()
        for r in 1...runs {
            pair.follower?.stop()
            let burst = 200_000
            let t0 = Clock.monoNanos()
            let writers = 4
            let group = DispatchGroup()
            for w in 0..<writers {
                group.enter()
                Thread {
                    defer { group.leave() }
                    guard let c = try? MemcacheConnection(tapEP) else { return }
                    for i in stride(from: w, to: burst, by: writers) { _ = try? c.set(Array("burst\(r)-\(i)".utf8), [1, 2, 3]) }
                }.start()
            }
            group.wait()
            tapMax.values.append(Double(burst) / (Double(Clock.monoNanos() - t0) / 1e9))
            let t1 = Clock.monoNanos()
            try pair.startFollower()
            try pair.waitInSync()
            apply.values.append(Double(burst) / (Double(Clock.monoNanos() - t1) / 1e9))
            log("follower catch-up run \(r): tap \(fmt(tapMax.values.last!)) writes/s, follower applies \(fmt(apply.values.last!)) records/s")
        }
        table.add("follower capacity", "tap max writes/s (4 conns)", tapMax)
        table.add("follower capacity", "catch-up records/s", apply, baseline: "tap max", ratio: apply.median / tapMax.median, goal: "≥ 1")
    }
}

/// Redis 7 master and replica on loopback, persistence off.
final class RedisPair {
    let master: Spawned, replica: Spawned
    let masterEP: Endpoint, replicaEP: Endpoint

    init?() throws {
        guard let bin = Env.which("redis-server") else {
            log("redis-server not installed: Redis columns are n/a (apt-get install redis-server)")
            return nil
        }
        let (mp, rp) = (Env.port(), Env.port())
        // --dir: a replica full sync writes an RDB file; keep it out of the working directory.
        let common = ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--protected-mode", "yes", "--dir", Env.dir]
        master = try Spawned(bin, ["--port", String(mp)] + common, name: "redis-master", log: Env.dir + "/redis-m.log")
        replica = try Spawned(bin, ["--port", String(rp), "--replicaof", "127.0.0.1", String(mp)] + common,
                              name: "redis-replica", log: Env.dir + "/redis-r.log")
        masterEP = Endpoint(host: "127.0.0.1", port: mp)
        replicaEP = Endpoint(host: "127.0.0.1", port: rp)
        try Env.waitConnectable(masterEP)
        try Env.waitConnectable(replicaEP)
        let m = try RedisKV(masterEP), r = try RedisKV(replicaEP)
        try m.set("redis-ready", [1])
        for _ in 0..<500 where (try? r.present(["redis-ready"])) != [true] { usleep(20_000) }
    }

    func stop() {
        replica.stop()
        master.stop()
    }
}
