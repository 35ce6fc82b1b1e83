import Foundation
import MemcacheClient
import MemcacheProtocol
import UnderstudyPosix

/// A key-value client the load generators drive: memcached (direct, tap, twemproxy) or Redis.
protocol KV: AnyObject {
    func set(_ key: String, _ value: [UInt8]) throws
    /// Which of `keys` exist, in one round trip.
    func present(_ keys: [String]) throws -> [Bool]
    func get(_ key: String) throws
}

final class MemcacheKV: KV {
    let c: MemcacheConnection
    init(_ ep: Endpoint) throws { c = try MemcacheConnection(ep, ioTimeoutMs: 10_000) }
    init(unixPath: String) throws { c = try MemcacheConnection(unixPath: unixPath, ioTimeoutMs: 10_000) }
    func set(_ key: String, _ value: [UInt8]) throws {
        let r = try c.set(Array(key.utf8), value)
        if r != .stored { throw BenchError("set \(key): \(r)") }
    }
    func present(_ keys: [String]) throws -> [Bool] {
        try c.pipeline(keys.map { MetaRequest.get(Array($0.utf8), []) }).map { $0.status == .hd }
    }
    func get(_ key: String) throws { _ = try c.get(Array(key.utf8)) }
}

/// Just enough RESP for SET, GET and MGET.
final class RedisKV: KV {
    let s: ByteStream
    init(_ ep: Endpoint) throws {
        let sock = try Socket.connect(to: ep, timeoutMs: 2000)
        try sock.setIOTimeout(milliseconds: 10_000)
        s = ByteStream(sock)
    }
    func command(_ parts: [[UInt8]]) throws -> [UInt8] {
        s.write("*\(parts.count)\r\n")
        for p in parts {
            s.write("$\(p.count)\r\n")
            s.write(p)
            s.write("\r\n")
        }
        try s.flush()
        let line = try s.readLine()
        if line.first == UInt8(ascii: "$"), let n = Int(String(decoding: line.dropFirst(), as: UTF8.self)), n >= 0 {
            _ = try s.readExact(n + 2)
        }
        return line
    }
    func set(_ key: String, _ value: [UInt8]) throws {
        let r = try command([Array("SET".utf8), Array(key.utf8), value])
        if r != Array("+OK".utf8) { throw BenchError("redis SET: \(String(decoding: r, as: UTF8.self))") }
    }
    func present(_ keys: [String]) throws -> [Bool] {
        let head = try command([Array("MGET".utf8)] + keys.map { Array($0.utf8) })
        guard head == Array("*\(keys.count)".utf8) else { throw BenchError("redis MGET: \(String(decoding: head, as: UTF8.self))") }
        return try keys.map { _ in
            let line = try s.readLine()
            guard let n = Int(String(decoding: line.dropFirst(), as: UTF8.self)) else { throw BenchError("redis MGET element") }
            if n >= 0 { _ = try s.readExact(n + 2) }
            return n >= 0
        }
    }
    func get(_ key: String) throws { _ = try command([Array("GET".utf8), Array(key.utf8)]) }
}

/// Writes at a fixed rate (or flat out with rate 0) from `threads` connections for `seconds`;
/// every `probeEvery`-th acknowledged key is checked on `replica` until it appears there,
/// which gives the replication lag from the active's ack to readable on the passive.
struct LagRun {
    var achievedRate = 0.0
    var lagsMs: [Double] = []
    var timeouts = 0
}

func lagRun(writer: @escaping @Sendable () throws -> any KV, replica: @escaping @Sendable () throws -> any KV,
            rate: Double, threads: Int, seconds: Double, probeEvery: Int, valueSize: Int = 100, prefix: String) throws -> LagRun {
    let probes = Monitor<(queue: [(String, UInt64)], done: Bool)>(([], false))
    let results = Monitor<(lags: [Double], timeouts: Int, ops: Int, slow: [Double], proberDone: Bool)>(([], 0, 0, [], false))
    let value = [UInt8](repeating: 0x61, count: valueSize)
    let start = Clock.monoNanos()
    let endAt = start + UInt64(seconds * 1e9)
    // One prober polls every outstanding probe key in one round trip per poll, so a probe
    // waits at most one poll to be looked at. Checking them one by one, a probe queued
    // behind others waited for them all, and that wait counted as replication lag: under a
    // flat-out load, where the prober gets little CPU, it can grow without bound.
    // Rare runs have had lags of a second and more, unexplained; these notes say when in the
    // run the slow probes were written, and whether a connection was slow to open.
    let slowNanos: UInt64 = 100_000_000
    @Sendable func connect<T>(_ what: String, _ make: () throws -> T) -> T? {
        let t0 = Clock.monoNanos()
        defer { if Clock.monoNanos() - t0 > slowNanos { log("\(prefix): the \(what)'s connection took \((Clock.monoNanos() - t0) / 1_000_000) ms to open") } }
        return try? make()
    }
    let prober = Thread {
        defer { results.update { $0.proberDone = true } }
        guard let r = connect("prober", replica) else { return }
        var outstanding: [(key: String, acked: UInt64)] = []
        while true {
            let (new, done) = probes.wait(until: { !$0.queue.isEmpty || $0.done || !outstanding.isEmpty },
                                          timeoutMs: 100) { s, _ -> ([(String, UInt64)], Bool) in
                defer { s.queue.removeAll() }
                return (s.queue, s.done)
            }
            outstanding += new.map { (key: $0.0, acked: $0.1) }
            if outstanding.isEmpty {
                if done { break }
                continue
            }
            let batch = Array(outstanding.prefix(1000))
            guard let found = try? r.present(batch.map(\.key)) else { break }
            let now = Clock.monoNanos()
            var lags: [Double] = [], slow: [Double] = [], timedOut = 0
            var waiting: [(key: String, acked: UInt64)] = []
            for (p, there) in zip(batch, found) {
                if there {
                    lags.append(Double(now - p.acked) / 1e6)
                    if now - p.acked > slowNanos { slow.append(Double(p.acked - start) / 1e6) }
                } else if now - p.acked > 10_000_000_000 {
                    timedOut += 1
                } else {
                    waiting.append(p)
                }
            }
            outstanding = waiting + outstanding.dropFirst(batch.count)
            results.update { s in
                s.lags += lags
                s.slow += slow
                s.timeouts += timedOut
            }
        }
        results.update { s in s.timeouts += outstanding.count }
    }
    prober.start()
    let group = DispatchGroup()
    for t in 0..<threads {
        group.enter()
        Thread {
            defer { group.leave() }
            guard let w = connect("writer", writer) else { return }
            let perThread = rate / Double(threads)
            var i = 0
            while true {
                let now = Clock.monoNanos()
                if now >= endAt { break }
                if perThread > 0 {
                    let due = start + UInt64(Double(i) / perThread * 1e9)
                    if due > now { usleep(UInt32(min(10_000, (due - now) / 1000))); continue }
                }
                let key = "\(prefix)-\(t)-\(i)"
                do { try w.set(key, value) } catch { break }
                let acked = Clock.monoNanos()
                if i % probeEvery == 0 { probes.update { $0.queue.append((key, acked)) } }
                i += 1
            }
            results.update { $0.ops += i }
        }.start()
    }
    group.wait()
    let elapsed = Double(Clock.monoNanos() - start) / 1e9
    probes.update { $0.done = true }
    // Waits on the prober's own last word: waiting on `prober.isFinished` was woken by that
    // update a moment before the thread ended, saw false, and then slept out its timeout
    // (30 s lost per run, twice per rate, whenever the race went that way).
    _ = results.wait(until: { $0.proberDone }, timeoutMs: 30_000) { _, _ in 0 }
    let r = results.withLock { $0 }
    if let first = r.slow.min(), let last = r.slow.max() {
        log("\(prefix): \(r.slow.count) probes lagged over \(slowNanos / 1_000_000) ms, written between \(Int(first)) and \(Int(last)) ms into the run")
    }
    return LagRun(achievedRate: Double(r.ops) / elapsed, lagsMs: r.lags, timeouts: r.timeouts)
}

/// Round-trip throughput and latency: `threads` connections doing gets or sets for `seconds`.
func roundTrips(_ make: @escaping @Sendable () throws -> any KV, threads: Int, seconds: Double, sets: Bool) throws -> (ops: Double, p50: Double, p99: Double, seconds: Double) {
    let results = Monitor<(lat: [Double], ops: Int)>(([], 0))
    let value = [UInt8](repeating: 0x62, count: 100)
    if let w = try? make() { for i in 0..<1000 { try w.set("rt-\(i)", value) } }
    let group = DispatchGroup()
    let start = Clock.monoNanos()
    let endAt = start + UInt64(seconds * 1e9)
    for t in 0..<threads {
        group.enter()
        Thread {
            defer { group.leave() }
            guard let c = try? make() else { return }
            var lat: [Double] = []
            lat.reserveCapacity(200_000)
            var i = t
            while Clock.monoNanos() < endAt {
                let a = Clock.monoNanos()
                do {
                    if sets { try c.set("rt-\(i % 1000)", value) } else { try c.get("rt-\(i % 1000)") }
                } catch { break }
                lat.append(Double(Clock.monoNanos() - a) / 1000)
                i += threads
            }
            let l = lat
            results.update { $0.lat += l; $0.ops += l.count }
        }.start()
    }
    group.wait()
    let elapsed = Double(Clock.monoNanos() - start) / 1e9
    let r = results.withLock { $0 }
    return (Double(r.ops) / elapsed, percentile(r.lat, 0.5), percentile(r.lat, 0.99), elapsed)
}
