import Foundation
import UnderstudyPosix

/// The tap as a proxy: get and set throughput and latency against direct memcached and
/// twemproxy, same client, same connection count.
enum TapBench {
    static func run(runs: Int, seconds: Double, table: Table) throws {
        let pair = try BenchPair()
        defer { pair.stop() }
        try pair.startKeeper()
        try pair.startTap()
        let twem = try Twemproxy(pair.srcEP)
        defer { twem?.stop() }
        let twemUnix = try Twemproxy(pair.srcEP, unixPath: pair.dir + "/twemproxy.sock")
        defer { twemUnix?.stop() }
        // The proxy as the issue compares it is the tap and its keeper. A second pair adds
        // what replication costs besides: a follower streaming from that keeper, whose `mg`
        // for every set lands on the active memcached, measured for sets only. Its follower
        // and passive memcached share these two cores, where production gives them a node of
        // their own, so that row understates what an active node sees.
        let following = try BenchPair.replicating(tap: true)
        defer { following.stop() }
        // Both proxies also listen on a Unix socket, as a proxy beside the application would
        // be reached: the client's hop then skips TCP on both ends.
        let (srcEP, tapEP, tapSocket) = (pair.srcEP, pair.tapEP!, pair.tapSocket!)
        var targets: [Target] = [("direct", { try MemcacheKV(srcEP) }), ("tap", { try MemcacheKV(tapEP) })]
        if let ep = twem?.endpoint { targets.append(("twemproxy", { try MemcacheKV(ep) })) }
        targets.append((Self.tapUnix, { try MemcacheKV(unixPath: tapSocket) }))
        if let path = twemUnix?.unixPath { targets.append((Self.twemproxyUnix, { try MemcacheKV(unixPath: path) })) }
        let followingEP = following.tapEP!
        targets.append((Self.following, { try MemcacheKV(followingEP) }))
        // What each proxy's own processes spend per request: the tap pays for its keeper too.
        let proxyProcesses: [String: [Spawned]] = ["tap": [pair.tap!, pair.keeper!], Self.tapUnix: [pair.tap!, pair.keeper!],
                                                   "twemproxy": twem.map { [$0.process] } ?? [],
                                                   Self.twemproxyUnix: twemUnix.map { [$0.process] } ?? [],
                                                   Self.following: [following.tap!, following.keeper!]]
        // What the memcached behind each spends per request: the follower's reads show here.
        var memcacheds: [String: Spawned] = [Self.following: following.src]
        for name in ["direct", "tap", "twemproxy", Self.tapUnix, Self.twemproxyUnix] { memcacheds[name] = pair.src }
        // 1 connection: what the proxy adds to a request when nothing queues (its own cost).
        // 4, and 32 as a PHP-FPM pool would open: under saturation p50 is mostly queueing,
        // so there latency follows throughput; many clients is what an event loop is for.
        // TAP_CONNS=4 TAP_OPS=set narrows the run to one case (A/B comparisons).
        let env = ProcessInfo.processInfo.environment
        let connCounts = env["TAP_CONNS"].flatMap { Int($0) }.map { [$0] } ?? [1, 4, 32]
        let ops = env["TAP_OPS"].map { [$0 == "set"] } ?? [false, true]
        for conns in connCounts {
            for sets in ops {
                try measure(conns: conns, sets: sets, targets: sets ? targets : targets.filter { $0.0 != Self.following },
                            processes: proxyProcesses, memcacheds: memcacheds, runs: runs, seconds: seconds, table: table)
            }
        }
    }

    typealias Target = (name: String, connect: @Sendable () throws -> any KV)

    /// The tap in front of a pair whose follower streams.
    static let following = "tap, following"
    static let tapUnix = "tap, unix socket"
    static let twemproxyUnix = "twemproxy, unix socket"
    /// The twemproxy each tap row is compared with: the one reached the same way.
    static let peer = ["tap": "twemproxy", following: "twemproxy", tapUnix: twemproxyUnix]

    static func measure(conns: Int, sets: Bool, targets: [Target], processes: [String: [Spawned]],
                        memcacheds: [String: Spawned], runs: Int, seconds: Double, table: Table) throws {
        let op = sets ? "set" : "get"
        var ops: [String: Figure] = [:], p50: [String: Figure] = [:], p99: [String: Figure] = [:]
        var cpu: [String: Figure] = [:], mcCPU: [String: Figure] = [:]
        for r in 1...runs {
            for (name, connect) in targets {
                let procs = processes[name] ?? []
                let mc = memcacheds[name]
                let cpuBefore = procs.reduce(0) { $0 + $1.cpuMicros }, mcBefore = mc?.cpuMicros ?? 0
                let res = try roundTrips(connect, threads: conns, seconds: seconds, sets: sets)
                let cpuUsed = procs.reduce(0) { $0 + $1.cpuMicros } - cpuBefore
                let requests = max(1, res.ops * res.seconds)
                ops[name, default: Figure()].values.append(res.ops)
                p50[name, default: Figure()].values.append(res.p50)
                p99[name, default: Figure()].values.append(res.p99)
                if !procs.isEmpty { cpu[name, default: Figure()].values.append(cpuUsed / requests) }
                if let mc { mcCPU[name, default: Figure()].values.append((mc.cpuMicros - mcBefore) / requests) }
                log("\(op) \(conns) conns via \(name) run \(r): \(fmt(res.ops)) ops/s p50 \(fmt(res.p50)) µs p99 \(fmt(res.p99)) µs")
            }
        }
        for (name, _) in targets {
            let label = "\(op) \(conns) conns via \(name)"
            // Each tap is compared with the twemproxy reached the same way; the goal is the
            // proxy's (see `run`), the same over either transport.
            let peer = Self.peer[name].flatMap { ops[$0] != nil ? $0 : nil }
            let hasGoal = name == "tap" || name == Self.tapUnix
            table.add(label, "ops/s", ops[name]!, baseline: peer ?? "",
                      ratio: peer.map { ops[name]!.median / ops[$0]!.median }, goal: hasGoal ? "≥ 1.0×" : "")
            // What the application sees: through the proxy (by either transport) against
            // straight to memcached over TCP, as it would reach the memcached on another node.
            let added = p50[name]!.median - p50["direct"]!.median
            table.add(label, "p50 µs", p50[name]!, baseline: name == "direct" ? "" : "+\(fmt(added)) µs vs direct",
                      goal: hasGoal ? "≤ +25 µs" : "")
            table.add(label, "p99 µs", p99[name]!)
            if let c = cpu[name] {
                table.add(label, "proxy CPU µs/request", c, baseline: peer ?? "",
                          ratio: peer.flatMap { cpu[$0] }.map { c.median / $0.median })
            }
            if sets, let m = mcCPU[name] {
                table.add(label, "memcached CPU µs/request", m, baseline: name == "direct" ? "" : "direct",
                          ratio: name == "direct" ? nil : mcCPU["direct"].map { m.median / $0.median })
            }
        }
    }
}

/// twemproxy (Debian `nutcracker`) in front of the same memcached, listening on a TCP port
/// or, given `unixPath`, on a Unix socket (mode 0600).
final class Twemproxy {
    let process: Spawned
    let endpoint: Endpoint
    let unixPath: String?

    init?(_ backend: Endpoint, unixPath: String? = nil) throws {
        guard let bin = Env.which("nutcracker") else {
            log("nutcracker not installed: twemproxy columns are n/a (apt-get install nutcracker)")
            return nil
        }
        let p = Env.port(), statsPort = Env.port()
        let conf = Env.dir + "/nutcracker-\(p).yml"
        self.unixPath = unixPath
        try """
            pool:
              listen: \(unixPath.map { "\($0) 0600" } ?? "127.0.0.1:\(p)")
              hash: fnv1a_64
              distribution: ketama
              timeout: 2000
              server_retry_timeout: 2000
              server_failure_limit: 1
              servers:
               - \(backend.description):1
            """.write(toFile: conf, atomically: true, encoding: .utf8)
        process = try Spawned(bin, ["-c", conf, "-s", String(statsPort), "-a", "127.0.0.1"], name: "twemproxy", log: Env.dir + "/twem.log")
        endpoint = Endpoint(host: "127.0.0.1", port: p)
        try Env.waitConnectable(unixPath.map { .unix(path: $0) } ?? .tcp(endpoint))
    }

    func stop() { process.stop() }
}
