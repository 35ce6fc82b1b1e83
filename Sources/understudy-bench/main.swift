import Foundation
import MemcacheClient
import UnderstudyPosix

// understudy-bench: release-built benchmarks with baselines measured in the same run.
// usage: understudy-bench [fullsync] [lag] [tap] [sync] [rss] [--runs N] [--follower-py PATH] [--quick]
// No arguments runs everything. Prints one table at the end; progress goes to stderr.

Children.stopAllOnTermination()
var args = Array(CommandLine.arguments.dropFirst())
var runs = 3
var followerPy = "/work/shared/reference/memcached-lab/follower.py"
var quick = false
if let i = args.firstIndex(of: "--runs"), i + 1 < args.count { runs = Int(args[i + 1]) ?? 3; args.removeSubrange(i...(i + 1)) }
if let i = args.firstIndex(of: "--follower-py"), i + 1 < args.count { followerPy = args[i + 1]; args.removeSubrange(i...(i + 1)) }
if let i = args.firstIndex(of: "--quick") { quick = true; args.remove(at: i) }
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
    log("error: \(error)")
    table.print()
    exit(1)
}
table.print()
