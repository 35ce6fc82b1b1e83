import Foundation
import JournalWire
import MemcacheClient
import MemcacheProtocol
import UnderstudyCore
import UnderstudyPosix

/// Two memcacheds, an active and a passive `understudy serve` and an `understudy tap`, all as
/// real processes of the built binary: on loopback, or with each node (memcached and daemon)
/// in its own network namespace and the tap on the test's side, so a drill can partition them.
final class PairHarness: @unchecked Sendable {
    let dir: String
    let active: MemcachedServer
    var passive: MemcachedServer
    let activePort = Ports.free()
    let passivePort = Ports.free()
    let tapPort = Ports.free()
    var keeper: ChildProcess?
    var follower: ChildProcess?
    var tap: ChildProcess?
    let backlog: String
    let secret: String?
    var followerSecret: String?
    var restarts = 0
    var keeperArgs: [String]
    var followerArgs: [String]
    /// Where node "a" (the active) and node "b" run.
    let a: Placement
    let b: Placement

    /// With `nodes`, the daemons listen on the namespaces' addresses, which needs a secret
    /// (protected mode): pass one.
    init(backlog: String = "64M", secret: String? = nil, startFollower: Bool = true, activeMemoryMB: Int = 256, passiveMemoryMB: Int? = nil,
         activeMemcachedArgs: [String] = [], tapMode: String = "async",
         keeperArgs: [String] = ["--on-local-failure", "none"], followerArgs: [String] = ["--on-active-failure", "none"],
         nodes: NodeNamespaces? = nil) throws {
        dir = Paths.tempDir("pair")
        self.backlog = backlog
        self.keeperArgs = keeperArgs
        self.followerArgs = followerArgs
        a = nodes?.a ?? .loopback
        b = nodes?.b ?? .loopback
        active = try MemcachedServer(memoryMB: activeMemoryMB, extraArgs: activeMemcachedArgs, placement: a)
        passive = try MemcachedServer(memoryMB: passiveMemoryMB ?? activeMemoryMB, placement: b)
        if let secret {
            self.secret = dir + "/secret"
            try Data((secret + "\n").utf8).write(to: URL(fileURLWithPath: self.secret!))
        } else {
            self.secret = nil
        }
        followerSecret = self.secret
        try startKeeper()
        if startFollower { try self.startFollower() }
        try startTap(mode: tapMode)
    }

    var secretArgs: [String] { secret.map { ["--secret-file", $0] } ?? [] }
    var journalA: String { "\(a.host):\(activePort)" }
    var journalB: String { "\(b.host):\(passivePort)" }

    func startKeeper() throws {
        keeper = try ChildProcess(Paths.understudy, ["serve", "--role", "active", "--memcached", active.address,
                                                    "--listen", journalA, "--control", dir + "/a.sock",
                                                    "--state-dir", dir + "/a", "--backlog-size", backlog,
                                                    "--peer", journalB, "--peer-memcached", passive.address] + keeperArgs + secretArgs,
                                  name: "keeper", logDir: dir, launcher: a.launcher)
        try keeper!.waitForLog("ready")
    }

    func startFollower() throws {
        restarts += 1
        follower = try ChildProcess(Paths.understudy, ["serve", "--role", "passive", "--memcached", passive.address,
                                                      "--listen", journalB, "--peer", journalA,
                                                      "--peer-memcached", active.address, "--control", dir + "/b.sock",
                                                      "--state-dir", dir + "/b"] + followerArgs + (followerSecret.map { ["--secret-file", $0] } ?? []),
                                    name: "follower\(restarts)", logDir: dir, launcher: b.launcher)
        try follower!.waitForLog("ready")
    }

    func startTap(mode: String = "async") throws {
        tap = try ChildProcess(Paths.understudy, ["tap", "--listen", "127.0.0.1:\(tapPort)", "--memcached", active.address,
                                                 "--journal", journalA, "--mode", mode, "--sync-timeout", "2000"] + secretArgs,
                               name: "tap", logDir: dir)
        // Both: the emitter connects to the keeper while the proxy is still being set up,
        // so the journal link may be up before the tap listens (a test that wrote then was
        // refused, in CI), and `ready` is printed once it listens.
        try tap!.waitForLog("understudy tap: ready")
        try tap!.waitForLog("connected to journal keeper")
    }

    /// A tap connection to the keeper spoken by hand: records reach the journal without a
    /// memcached write before them.
    func rawTap(id: String, wantsApplied: Bool) throws -> JournalChannel {
        try Self.rawTap(to: Endpoint(host: "127.0.0.1", port: activePort), id: id, wantsApplied: wantsApplied)
    }

    static func rawTap(to keeper: Endpoint, id: String, wantsApplied: Bool) throws -> JournalChannel {
        let (ch, _) = try Handshake.connect(keeper, secret: [], kind: .tap)
        do { try startTap(on: ch, id: id, wantsApplied: wantsApplied) } catch {
            ch.close()
            throw error
        }
        return ch
    }

    /// Opens a tap's session on a channel to a keeper (past the handshake, if any).
    static func startTap(on ch: JournalChannel, id: String, wantsApplied: Bool) throws {
        try ch.send(.tapStart(tapID: Array(id.utf8), wantsApplied: wantsApplied))
        guard case .tapWelcome = try ch.receive() else { throw JournalError.unexpected("no tap welcome") }
    }

    /// `understudy promote|demote|resync --control` on node "a" or "b"; returns its output.
    @discardableResult
    func control(_ which: String, _ cmd: String) throws -> String {
        try runTool(Paths.understudy, [cmd, "--control", dir + "/\(which).sock"], timeout: 30)
    }

    var tapEndpoint: Endpoint { Endpoint(host: "127.0.0.1", port: tapPort) }

    func status(_ which: String) throws -> NodeStatus {
        let json = try runTool(Paths.understudy, ["status", "--json", "--control", dir + "/\(which).sock"], timeout: 20)
        return try JSONDecoder().decode(NodeStatus.self, from: Data(json.utf8))
    }

    /// Waits until the follower has applied everything the keeper journaled and is streaming.
    func waitCaughtUp(timeout: Double = 120) throws {
        let deadline = Date().addingTimeInterval(timeout)
        var last = ""
        while Date() < deadline {
            if let k = try? status("a").keeper, let f = try? status("b").follower {
                last = "keeper end \(k.endOffset), follower applied \(f.appliedOffset), in sync \(f.inSync), error \(f.lastError ?? "-")"
                if f.inSync && f.appliedOffset >= k.endOffset && k.followerApplied >= k.endOffset { return }
            }
            usleep(100_000)
        }
        throw TestFailure("follower did not catch up in \(timeout) s: \(last)\n--- keeper\n\(keeper?.log.suffix(3000) ?? "")\n--- follower\n\(follower?.log.suffix(3000) ?? "")")
    }

    /// `understudy verify` between the two memcacheds: its exit code and output.
    func verify() throws -> (Int32, String) {
        let r = try Subprocess.run(Paths.understudy, ["verify", "--active", active.address, "--passive", passive.address],
                                   timeoutMs: 300_000)
        return (r.exit.code, r.output)
    }

    /// Writes keys through the tap in pipelined meta batches; returns how many.
    @discardableResult
    func write(_ keys: Range<Int>, prefix: String = "k", value: (Int) -> [UInt8] = { Array("value-\($0)".utf8) },
               flags: (Int) -> String = { "F\($0 % 65536)" }, ttl: (Int) -> String = { _ in "T0" }) throws -> Int {
        let c = try MemcacheConnection(tapEndpoint, ioTimeoutMs: 30_000)
        defer { c.close() }
        var batch: [MetaRequest] = []
        for i in keys {
            batch.append(.set(Array("\(prefix)\(i)".utf8), value(i), [flags(i), ttl(i)]))
            if batch.count == 500 {
                let failed = try c.quietBatch(batch)
                if !failed.isEmpty { throw TestFailure("tap refused writes: \(failed.prefix(3))") }
                batch.removeAll()
            }
        }
        if !batch.isEmpty { _ = try c.quietBatch(batch) }
        return keys.count
    }

    func stop() {
        tap?.stop()
        follower?.stop()
        keeper?.stop()
        active.stop()
        passive.stop()
    }

    deinit { stop() }
}
