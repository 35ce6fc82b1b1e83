import Foundation
import MemcacheClient
import UnderstudyPosix

// understudy-bench: release-built benchmarks with baselines measured in the same run.
// No part named runs every part (see `usage`). Prints one table at the end; progress goes to stderr.

Children.stopAllOnTermination()
var args = Array(CommandLine.arguments.dropFirst())
var runs = 3
var followerPy = "/work/shared/reference/memcached-lab/follower.py"
var quick = false
let usage = "usage: understudy-bench [fullsync] [lag] [tap] [sync] [rss] [--runs N] [--follower-py PATH] [--quick]"
/// A mistyped argument must stop the bench, not start the whole eight-minute run.
func refuse(_ why: String) -> Never {
    log("\(why)\n\(usage)")
    exit(2)
}
if let i = args.firstIndex(of: "--runs") {
    guard i + 1 < args.count, let n = Int(args[i + 1]), n > 0 else { refuse("--runs needs a positive count") }
    runs = n
    args.removeSubrange(i...(i + 1))
}
if let i = args.firstIndex(of: "--follower-py") {
    guard i + 1 < args.count else { refuse("--follower-py needs a path") }
    followerPy = args[i + 1]
    args.removeSubrange(i...(i + 1))
}
if let i = args.firstIndex(of: "--quick") { quick = true; args.remove(at: i) }
let parts: Set = ["fullsync", "lag", "tap", "sync", "rss"]
if let unknown = args.first(where: { !parts.contains($0) }) { refuse("unknown argument \(unknown)") }
let all = args.isEmpty
let table = Table()

do {
    if all || args.contains("fullsync") {
        try FullSyncBench.run(keys: quick ? 200_000 : 1_000_000, size: 100, runs: runs, followerPy: followerPy, table: table)
        try FullSyncBench.run(keys: quick ? 20_000 : 100_000, size: 4096, runs: runs, followerPy: followerPy, table: table)
    }
    if all || args.contains("lag") { try LagBench.run(runs: runs, seconds: quick ? 3 : 5, table: table) }
    if all || args.contains("tap") { try TapBench.run(runs: runs, seconds: quick ? 2 : 4, table: table) }
    if all || args.contains("sync") { try SyncBench.run(runs: runs, table: table) }
    if all || args.contains("rss") { try RSSBench.run(keys: quick ? 200_000 : 1_000_000, table: table) }
} catch {
    log("error: \(error); logs kept in \(Env.dir)")
    table.print()
    exit(1)
}
table.print()
// A run that finished leaves nothing behind (each held memcached logs and a Redis dump, and
// they piled up by the hundred); BENCH_KEEP=1 keeps them for inspection.
if ProcessInfo.processInfo.environment["BENCH_KEEP"] == nil {
    try? FileManager.default.removeItem(atPath: Env.dir)
} else {
    log("logs kept in \(Env.dir)")
}
