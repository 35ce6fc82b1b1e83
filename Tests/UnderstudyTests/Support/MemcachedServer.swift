import Foundation
import Glibc
import MemcacheClient
import MemcacheProtocol
import UnderstudyPosix

/// A real memcached on a free loopback port, started for one test and stopped by pid.
final class MemcachedServer: @unchecked Sendable {
    let port: UInt16
    let child: ChildProcess
    let dir: String
    let placement: Placement

    /// memcached must be installed (`.ci/run` installs it); a missing binary fails the test
    /// with that message instead of skipping it.
    init(memoryMB: Int = 256, extraArgs: [String] = [], port: UInt16? = nil, dir: String? = nil, placement: Placement = .loopback) throws {
        guard let bin = Paths.which("memcached") else { throw TestFailure("memcached is not installed (apt-get install memcached)") }
        self.dir = dir ?? Paths.tempDir("mc")
        self.placement = placement
        let logDir = self.dir
        (self.port, self.child) = try Ports.starting(fixed: port) { p in
            var args = ["-p", String(p), "-l", placement.host, "-U", "0", "-m", String(memoryMB), "-t", "2"]
            if getuid() == 0 { args += ["-u", "root"] }
            let child = try ChildProcess(bin, args + extraArgs, name: "memcached-\(p)", logDir: logDir, launcher: placement.launcher)
            do {
                try Self.waitReady(child, Endpoint(host: placement.host, port: p))
                return (p, child)
            } catch {
                child.kill9()
                if child.log.contains("Address already in use") { throw Ports.Taken(error: error) }
                throw error
            }
        }
    }

    var endpoint: Endpoint { Endpoint(host: placement.host, port: port) }
    var address: String { "\(placement.host):\(port)" }

    static func waitReady(_ child: ChildProcess, _ endpoint: Endpoint) throws {
        for _ in 0..<500 {
            if let c = try? MemcacheConnection(endpoint, connectTimeoutMs: 200) {
                c.close()
                return
            }
            if !child.isRunning { throw TestFailure("memcached on \(endpoint.port) exited: \(child.log)") }
            usleep(10_000)
        }
        throw TestFailure("memcached on \(endpoint.port) did not start")
    }

    func connect() throws -> MemcacheConnection { try MemcacheConnection(endpoint, ioTimeoutMs: 10_000) }

    /// Writes `pre0…` = `v0…` straight into this memcached (not journaled: only a full sync
    /// copies them), in pipelined quiet batches.
    func prefill(_ count: Int) throws {
        let c = try connect()
        defer { c.close() }
        var batch: [MetaRequest] = []
        for i in 0..<count {
            batch.append(.set(Array("pre\(i)".utf8), Array("v\(i)".utf8), ["T0"]))
            if batch.count == 2000 || i == count - 1 {
                let refused = try c.quietBatch(batch)
                guard refused.isEmpty else { throw TestFailure("prefill of \(address) refused: \(refused.prefix(3))") }
                batch.removeAll(keepingCapacity: true)
            }
        }
    }

    /// A restarted memcached is empty, as after a crash.
    func restart() throws -> MemcachedServer {
        child.kill9()
        return try MemcachedServer(port: port, dir: dir, placement: placement)
    }

    /// memcached 1.6 spends ~0.8 s shutting down on SIGTERM; a test fixture holds nothing
    /// worth a graceful stop.
    func stop() { child.kill9() }
    func kill9() { child.kill9() }

    deinit { child.kill9() }
}
