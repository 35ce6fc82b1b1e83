import Foundation
import MemcacheClient
import MemcacheProtocol
import UnderstudyCore
import UnderstudyPosix

/// An active and passive memcached with release-built `understudy serve` processes, and
/// optionally a tap: what the replication benchmarks measure.
final class BenchPair {
    let src: Spawned, srcEP: Endpoint
    let dst: Spawned, dstEP: Endpoint
    var keeper: Spawned?
    var follower: Spawned?
    var tap: Spawned?
    let jA = Env.port(), jB = Env.port()
    var tapEP: Endpoint?
    /// The tap's Unix socket, beside its TCP port.
    var tapSocket: String?
    let dir: String

    init(memoryMB: Int = 2048) throws {
        (src, srcEP) = try Env.memcached(memoryMB: memoryMB)
        (dst, dstEP) = try Env.memcached(memoryMB: memoryMB)
        dir = Env.dir + "/pair-\(jA)"
        try? FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    }

    /// A pair streaming and in sync: keeper, follower and, if `tap`, a tap in front of the
    /// active.
    static func replicating(tap: Bool = true) throws -> BenchPair {
        let pair = try BenchPair()
        do {
            try pair.startKeeper()
            try pair.startFollower()
            if tap { try pair.startTap() }
            try pair.waitInSync()
        } catch {
            pair.stop()
            throw error
        }
        return pair
    }

    func startKeeper(backlog: String = "256M") throws {
        keeper = try Spawned(Env.understudy, ["serve", "--role", "active", "--memcached", srcEP.description, "--listen", "127.0.0.1:\(jA)",
                                              "--control", dir + "/a.sock", "--state-dir", dir + "/a", "--backlog-size", backlog,
                                              "--on-local-failure", "none", "--log-level", "warning"],
                             name: "keeper", log: dir + "/keeper.log")
        try Env.waitConnectable(Endpoint(host: "127.0.0.1", port: jA))
    }

    func startFollower() throws {
        follower = try Spawned(Env.understudy, ["serve", "--role", "passive", "--memcached", dstEP.description, "--listen", "127.0.0.1:\(jB)",
                                                "--peer", "127.0.0.1:\(jA)", "--peer-memcached", srcEP.description,
                                                "--control", dir + "/b.sock", "--state-dir", dir + "/b",
                                                "--on-active-failure", "none", "--log-level", "warning"],
                               name: "follower", log: dir + "/follower.log")
        try Env.waitConnectable(Endpoint(host: "127.0.0.1", port: jB))
    }

    func startTap(mode: String = "async") throws {
        tap?.stop()
        let p = Env.port()
        let socket = dir + "/tap-\(p).sock"
        // TAP_THREADS and TAP_SPIN_US pass the tap's tuning through, for A/B runs.
        let env = ProcessInfo.processInfo.environment
        let tuning = [("TAP_THREADS", "--threads"), ("TAP_SPIN_US", "--spin-us")].flatMap { name, flag in env[name].map { [flag, $0] } ?? [] }
        tap = try Spawned(Env.understudy, ["tap", "--listen", "127.0.0.1:\(p),\(socket)", "--memcached", srcEP.description,
                                           "--journal", "127.0.0.1:\(jA)", "--mode", mode] + tuning,
                          name: "tap", log: dir + "/tap-\(p).log")
        tapEP = Endpoint(host: "127.0.0.1", port: p)
        tapSocket = socket
        try Env.waitConnectable(tapEP!)
        usleep(200_000)  // its journal connection
    }

    /// The status of node "a" or "b", as a dictionary. Asked over the control socket in
    /// process: spawning `understudy status` every poll cost the machine CPU the run needed.
    func status(_ node: String) -> [String: Any] {
        guard let text = try? ControlClient.request("status", path: dir + "/\(node).sock", timeoutMs: 5000),
              let obj = try? JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any] else { return [:] }
        return obj
    }

    func follower(_ field: String) -> Any? { (status("b")["follower"] as? [String: Any])?[field] }

    func waitInSync(timeout: Double = 600) throws {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            let end = (status("a")["keeper"] as? [String: Any])?["endOffset"] as? Int ?? -1
            if follower("inSync") as? Bool == true, follower("appliedOffset") as? Int == end { return }
            usleep(50_000)
        }
        throw BenchError("follower did not get in sync within \(timeout) s")
    }

    func stop() {
        for s in [tap, follower, keeper].compactMap({ $0 }) { s.stop() }
        src.stop()
        dst.stop()
    }

    deinit { stop() }
}

/// Fills a memcached with `count` keys of `size` bytes using pipelined quiet `ms` batches;
/// returns keys/s (the destination ingest baseline when the target is empty).
@discardableResult
func fill(_ ep: Endpoint, count: Int, size: Int, prefix: String = "key:") throws -> Double {
    let c = try MemcacheConnection(ep, ioTimeoutMs: 60_000)
    defer { c.close() }
    let value = [UInt8](repeating: 0x78, count: size)
    let now = Clock.unixSeconds()
    var out: [UInt8] = []
    out.reserveCapacity(1000 * (size + 64))
    let start = Clock.monoNanos()
    var i = 0
    while i < count {
        out.removeAll(keepingCapacity: true)
        let end = min(count, i + 1000)
        while i < end {
            let ttl = i % 3 == 0 ? 0 : i % 3 == 1 ? 3600 : Int(now) + 40 * 86400
            out.append(contentsOf: "ms \(prefix)\(i) \(size) F\(i % 65536) T\(ttl) q\r\n".utf8)
            out.append(contentsOf: value)
            out.append(contentsOf: [13, 10])
            i += 1
        }
        out.append(contentsOf: "mn\r\n".utf8)
        try c.send(out)
        while true {
            let r = try c.readMetaReply()
            if r.status == .mn { break }
        }
    }
    return Double(count) / (Double(Clock.monoNanos() - start) / 1e9)
}
