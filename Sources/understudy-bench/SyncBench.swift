import Foundation
import UnderstudyPosix

/// Set latency in sync mode against async mode and direct memcached, one connection.
enum SyncBench {
    static func run(runs: Int, table: Table) throws {
        let pair = try BenchPair.replicating(tap: false)
        defer { pair.stop() }
        var p50: [String: Figure] = [:], p99: [String: Figure] = [:]
        for r in 1...runs {
            for mode in ["direct", "async", "sync"] {
                if mode != "direct" { try pair.startTap(mode: mode) }
                let ep = mode == "direct" ? pair.srcEP : pair.tapEP!
                let res = try roundTrips({ try MemcacheKV(ep) }, threads: 1, seconds: 3, sets: true)
                p50[mode, default: Figure()].values.append(res.p50)
                p99[mode, default: Figure()].values.append(res.p99)
                log("set via \(mode) run \(r): p50 \(fmt(res.p50)) µs p99 \(fmt(res.p99)) µs")
            }
        }
        for mode in ["direct", "async", "sync"] {
            let ratio = p50[mode]!.median / p50["direct"]!.median
            table.add("set latency, \(mode)", "p50 µs", p50[mode]!, baseline: mode == "direct" ? "" : "direct",
                      ratio: mode == "direct" ? nil : ratio, goal: mode == "sync" ? "≤ 3×" : "")
            table.add("set latency, \(mode)", "p99 µs", p99[mode]!)
        }
    }
}

/// Resident memory of the daemons while following, and growth per million keys.
enum RSSBench {
    static func run(keys: Int, table: Table) throws {
        let pair = try BenchPair.replicating()
        defer { pair.stop() }
        usleep(500_000)
        let idleF = Double(pair.follower!.rssKiB), idleK = Double(pair.keeper!.rssKiB)
        try fill(pair.srcEP, count: keys, size: 100)
        // A resync of the pre-filled active, then streaming through the tap.
        _ = try Env.run(Env.understudy, ["resync", "--control", pair.dir + "/b.sock"])
        usleep(500_000)
        try pair.waitInSync()
        let (tapEP, dstEP) = (pair.tapEP!, pair.dstEP)
        _ = try lagRun(writer: { try MemcacheKV(tapEP) }, replica: { try MemcacheKV(dstEP) },
                       rate: 20000, threads: 2, seconds: 3, probeEvery: 100, prefix: "rss")
        try pair.waitInSync()
        let f = Double(pair.follower!.rssKiB), k = Double(pair.keeper!.rssKiB)
        let perMillion = (f - idleF) / (Double(keys) / 1e6)
        table.add("daemon memory", "follower RSS MiB idle", Figure(values: [idleF / 1024]))
        table.add("daemon memory", "follower RSS MiB after \(keys / 1000)k keys", Figure(values: [f / 1024]))
        table.add("daemon memory", "follower growth MiB per 1M keys", Figure(values: [perMillion / 1024]))
        table.add("daemon memory", "keeper RSS MiB idle → after", Figure(values: [idleK / 1024, k / 1024]))
    }
}
