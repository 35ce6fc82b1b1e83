import Foundation
import JournalWire
import UnderstudyPosix
import WriteTap
@testable import UnderstudyCore

/// memcached, an in-process keeper (a real `Node` in the active role) and a tap proxy in
/// front of memcached journaling to it. Tests read what the keeper journaled.
final class TapHarness: @unchecked Sendable {
    let memcached: MemcachedServer
    let dir: String
    var node: Node
    let proxy: TapProxy
    let emitter: TapEmitter
    let journalPort: UInt16

    /// With `unixSocket`, the tap also listens on `socketPath` (mode `socketMode`).
    init(mode: TapEmitter.Mode = .async, capacity: Int = 1 << 20, syncTimeoutMs: Int = 1000,
         threads: Int = TapProxy.Options.defaultThreads, replySpinMicros: Int = TapProxy.Options.defaultReplySpinMicros,
         unixSocket: Bool = false, socketMode: mode_t = 0o700) throws {
        memcached = try MemcachedServer()
        dir = Paths.tempDir("tap")
        let (dir, address) = (dir, memcached.address)
        (journalPort, node) = try Ports.starting { port in
            do {
                return (port, try Self.keeper(dir: dir, port: port, memcached: address))
            } catch let e as Node.StartError where e.errno == EADDRINUSE {
                throw Ports.Taken(error: e)
            }
        }
        emitter = TapEmitter(.init(journal: Endpoint(host: "127.0.0.1", port: journalPort), capacity: capacity, mode: mode, syncTimeoutMs: syncTimeoutMs))
        let listen: [ListenAddress] = [.tcp(Endpoint(host: "127.0.0.1", port: 0))] + (unixSocket ? [.unix(path: dir + "/tap.sock")] : [])
        proxy = try TapProxy(.init(listen: listen, socketMode: socketMode, memcached: memcached.endpoint, threads: threads,
                                   replySpinMicros: replySpinMicros), emitter: emitter)
        proxy.start()
        _ = waitUntil(5) { self.emitter.isConnected }
    }

    static func keeper(dir: String, port: UInt16, memcached: String, suffix: String = "",
                       settings: [(String, String)] = []) throws -> Node {
        try node(.active, dir: dir, port: port, memcached: memcached, suffix: suffix, settings: settings)
    }

    /// A node in this process, started; `settings` go through `Config.set` as on the command line.
    static func node(_ role: Config.Role, dir: String, port: UInt16, memcached: String, suffix: String = "",
                     settings: [(String, String)] = []) throws -> Node {
        var c = Config()
        c.role = role
        try c.set("memcached", memcached)
        try c.set("listen", "127.0.0.1:\(port)")
        for (k, v) in settings { try c.set(k, v) }
        c.control = dir + "/control\(suffix).sock"
        c.stateDir = dir + "/state\(suffix)"
        let n = try Node(c)
        n.start()
        return n
    }

    var address: String { "127.0.0.1:\(proxy.port)" }
    var socketPath: String { dir + "/tap.sock" }
    var endpoint: Endpoint { Endpoint(host: "127.0.0.1", port: proxy.port) }

    var keeper: Keeper? { node.state.withLock { $0.keeper } }

    /// (op, key) of every journaled record, in journal order.
    func records() -> [(RecordOp, String)] {
        keeper?.state.withLock { s in s.backlog.records.map { ($0.op, String(decoding: $0.key, as: UTF8.self)) } } ?? []
    }

    func waitForRecords(_ n: Int, timeout: Double = 10) -> [(RecordOp, String)] {
        _ = waitUntil(timeout) { self.records().count >= n }
        return records()
    }

    func stop() {
        proxy.stop()
        node.stop()
        memcached.stop()
    }

    deinit { stop() }
}

/// Polls `cond` every 10 ms until it holds or `seconds` pass. Bounded by design.
@discardableResult
func waitUntil(_ seconds: Double, _ cond: () -> Bool) -> Bool {
    let deadline = Date().addingTimeInterval(seconds)
    while Date() < deadline {
        if cond() { return true }
        usleep(10_000)
    }
    return cond()
}

/// Runs an external client program and returns its output (stdout and stderr together);
/// throws with that output on failure. Killed, with its process group, after `timeout` seconds.
@discardableResult
func runTool(_ exe: String, _ args: [String], stdin: String? = nil, timeout: Double = 60,
             environment: [String: String]? = nil) throws -> String {
    var input = Subprocess.Stream.null
    if let stdin {
        let path = Paths.tempDir("stdin") + "/stdin"
        try stdin.write(toFile: path, atomically: false, encoding: .utf8)
        input = .file(path)
    }
    let r = try Subprocess.run(exe, args, environment: environment, stdin: input, timeoutMs: Int(timeout * 1000))
    guard r.exit.code == 0, !r.timedOut else {
        throw TestFailure("\(exe) \(args.joined(separator: " ")) \(r.timedOut ? "timed out after \(timeout) s" : r.exit.description):\n\(r.output)")
    }
    return r.output
}

/// A raw text-protocol conversation: send bytes, read until `terminator` appears.
func converse(_ endpoint: Endpoint, _ request: [UInt8], until terminator: String, timeoutMs: Int = 5000) throws -> String {
    try converse(endpoint, pieces: [request], until: terminator, timeoutMs: timeoutMs)
}

/// Sends `pieces` 20 ms apart, so a proxy reads each on its own, then reads as `converse` does.
func converse(_ endpoint: Endpoint, pieces: [[UInt8]], until terminator: String, timeoutMs: Int = 5000) throws -> String {
    let s = try Socket.connect(to: endpoint, timeoutMs: 2000)
    defer { s.close() }
    try s.setIOTimeout(milliseconds: timeoutMs)
    for (i, piece) in pieces.enumerated() {
        if i > 0 { Clock.sleep(milliseconds: 20) }
        try s.write(piece)
    }
    let got = try readFrom(s) { String(decoding: $0, as: UTF8.self).hasSuffix(terminator) }
    return String(decoding: got, as: UTF8.self)
}

/// Reads from `s` until `done` holds for what arrived, or the peer closes.
func readFrom(_ s: Socket, until done: ([UInt8]) -> Bool) throws -> [UInt8] {
    var got: [UInt8] = []
    var buf = [UInt8](repeating: 0, count: 65536)
    while !done(got) {
        let n = try buf.withUnsafeMutableBytes { try s.read(into: $0) }
        if n == 0 { break }
        got += buf[0..<n]
    }
    return got
}
