import Foundation
import JournalWire
import MemcacheClient
import MemcacheProtocol
import UnderstudyCore
import UnderstudyPosix
import WriteTap

/// `understudy demo`: a whole pair on loopback in one process — two memcacheds, an active and
/// a passive daemon, a tap — then writes, replication, verify, and a failover.
enum DemoCommand {
    static func run(_ args: [String]) -> Int32 {
        let keys = Int(args.first(where: { Int($0) != nil }) ?? "") ?? 20_000
        guard let bin = ["/usr/bin/memcached", "/usr/local/bin/memcached"].first(where: { FileManager.default.isExecutableFile(atPath: $0) }) else {
            printError("understudy demo: memcached is not installed (apt-get install -y memcached)")
            return 1
        }
        Log.setLevel(.error)
        let dir = NSTemporaryDirectory() + "understudy-demo-\(getpid())"
        try? FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let children = Children()
        defer {
            children.killAll()
            try? FileManager.default.removeItem(atPath: dir)
        }
        do {
            return try demo(keys: keys, bin: bin, dir: dir, children: children)
        } catch {
            printError("understudy demo: \(error)")
            return 1
        }
    }

    static func demo(keys: Int, bin: String, dir: String, children: Children) throws -> Int32 {
            let (mA, mB, jA, jB, tp) = (port(), port(), port(), port(), port())
            let activeMC = try children.memcached(bin, mA)
            _ = try children.memcached(bin, mB)
            say("memcached A on 127.0.0.1:\(mA) (active), B on 127.0.0.1:\(mB) (passive)")
            let a = try node("active", mA, jA, jB, mB, dir + "/a")
            let b = try node("passive", mB, jB, jA, mA, dir + "/b")
            let emitter = TapEmitter(.init(journal: Endpoint(host: "127.0.0.1", port: jA)))
            let tap = try TapProxy(.init(listen: [.tcp(Endpoint(host: "127.0.0.1", port: tp))], memcached: Endpoint(host: "127.0.0.1", port: mA)), emitter: emitter)
            tap.start()
            say("daemons: A keeps the journal on :\(jA); B follows it; the tap listens on 127.0.0.1:\(tp)")

            try writeKeys(keys, port: tp)
            waitSynced(a, b)
            let report = try Verifier(active: Endpoint(host: "127.0.0.1", port: mA), passive: Endpoint(host: "127.0.0.1", port: mB)).run()
            say("verify A vs B: \(report.compared) keys compared, \(report.total) differences")

            say("failover: killing A's memcached; promoting B as heartbeat's resource script would")
            activeMC.kill(SIGKILL)
            activeMC.wait()
            let promoted = (try? b.promote(reason: "demo failover").get()) ?? "promotion failed"
            say("B: \(promoted)")
            let onB = try MemcacheConnection(Endpoint(host: "127.0.0.1", port: mB))
            let v = try onB.get(Array("session:\(keys - 1)".utf8))
            let deleted = try onB.get(Array("session:0".utf8))
            let value = v.map { String(decoding: $0.value, as: UTF8.self) } ?? "MISSING"
            say("read session:\(keys - 1) from B: \(value); session:0 (deleted) is \(deleted == nil ? "absent" : "PRESENT")")
            tap.stop()
            say("B status: role \(b.status.role), epoch \(b.status.epoch)")
            a.stop()
            b.stop()
            return report.total == 0 && v != nil && deleted == nil ? 0 : 1
    }

    static func say(_ s: String) { print("demo: \(s)") }

    static func writeKeys(_ keys: Int, port: UInt16) throws {
        let client = try MemcacheConnection(Endpoint(host: "127.0.0.1", port: port))
        let started = Clock.monoNanos()
        var batch: [MetaRequest] = []
        for i in 0..<keys {
            batch.append(.set(Array("session:\(i)".utf8), Array("cart=\(i)".utf8), ["F\(i % 7)", i % 2 == 0 ? "T0" : "T3600"]))
            if batch.count == 500 {
                _ = try client.quietBatch(batch)
                batch.removeAll()
            }
        }
        if !batch.isEmpty { _ = try client.quietBatch(batch) }
        _ = try client.delete(Array("session:0".utf8))
        say("wrote \(keys) keys and deleted one through the tap in \(Double(Clock.monoNanos() - started) / 1e6) ms")
    }

    static func waitSynced(_ a: Node, _ b: Node) {
        var applied: UInt64 = 0
        var end: UInt64 = 0
        var follower: FollowerStatus?
        for _ in 0..<300 {
            follower = b.status.follower
            end = a.status.keeper.map { $0.endOffset } ?? 0
            applied = follower.map { $0.appliedOffset } ?? 0
            if let f = follower, f.inSync, applied == end { break }
            usleep(20_000)
        }
        let lagRecords = end > applied ? end - applied : 0
        let lagMs = follower.map { $0.lagMs } ?? 0
        say("B: applied offset \(applied) of \(end), lag \(lagRecords) records / \(String(format: "%.2f", lagMs)) ms")
    }

    static func port() -> UInt16 {
        guard let l = try? Listener.tcp(Endpoint(host: "127.0.0.1", port: 0)) else { return 0 }
        defer { l.close() }
        return l.port
    }

    static func node(_ role: String, _ mc: UInt16, _ j: UInt16, _ peerJ: UInt16, _ peerMC: UInt16, _ path: String) throws -> Node {
        let c = try Config.parse(["--role", role, "--memcached", "127.0.0.1:\(mc)", "--listen", "127.0.0.1:\(j)",
                                  "--peer", "127.0.0.1:\(peerJ)", "--peer-memcached", "127.0.0.1:\(peerMC)",
                                  "--control", path + ".sock", "--state-dir", path,
                                  "--on-active-failure", "none", "--on-local-failure", "none"])
        let n = try Node(c)
        n.start()
        return n
    }
}

/// The demo's memcached processes, killed by pid at the end.
final class Children {
    var procs: [Subprocess] = []

    func memcached(_ bin: String, _ p: UInt16) throws -> Subprocess {
        let proc = try Subprocess(bin, ["-p", String(p), "-l", "127.0.0.1", "-U", "0", "-m", "256"] + (getuid() == 0 ? ["-u", "root"] : []))
        procs.append(proc)
        for _ in 0..<200 {
            if let c = try? MemcacheConnection(Endpoint(host: "127.0.0.1", port: p), connectTimeoutMs: 100) {
                c.close()
                break
            }
            usleep(10_000)
        }
        return proc
    }

    func killAll() {
        for c in procs {
            c.kill(SIGKILL)
            c.wait()
        }
    }
}
