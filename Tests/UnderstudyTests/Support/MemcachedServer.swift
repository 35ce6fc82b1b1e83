import Foundation
import Glibc
import MemcacheClient
import UnderstudyPosix

/// A real memcached on a free loopback port, started for one test and stopped by pid.
final class MemcachedServer: @unchecked Sendable {
    let port: UInt16
    let child: ChildProcess
    let dir: String

    /// memcached must be installed (`.ci/run` installs it); a missing binary fails the test
    /// with that message instead of skipping it.
    init(memoryMB: Int = 256, extraArgs: [String] = [], port: UInt16? = nil, dir: String? = nil) throws {
        guard let bin = Paths.which("memcached") else { throw TestFailure("memcached is not installed (apt-get install memcached)") }
        let p = port ?? Ports.free()
        self.port = p
        self.dir = dir ?? Paths.tempDir("mc")
        var args = ["-p", String(p), "-l", "127.0.0.1", "-U", "0", "-m", String(memoryMB), "-t", "2"]
        if getuid() == 0 { args += ["-u", "root"] }
        child = try ChildProcess(bin, args + extraArgs, name: "memcached-\(p)", logDir: self.dir)
        try waitReady()
    }

    var endpoint: Endpoint { Endpoint(host: "127.0.0.1", port: port) }
    var address: String { "127.0.0.1:\(port)" }

    func waitReady() throws {
        for _ in 0..<500 {
            if let c = try? MemcacheConnection(endpoint, connectTimeoutMs: 200) {
                c.close()
                return
            }
            if !child.isRunning { throw TestFailure("memcached on \(port) exited: \(child.log)") }
            usleep(10_000)
        }
        throw TestFailure("memcached on \(port) did not start")
    }

    func connect() throws -> MemcacheConnection { try MemcacheConnection(endpoint, ioTimeoutMs: 10_000) }

    /// A restarted memcached is empty, as after a crash.
    func restart() throws -> MemcachedServer {
        child.kill9()
        return try MemcachedServer(port: port, dir: dir)
    }

    /// memcached 1.6 spends ~0.8 s shutting down on SIGTERM; a test fixture holds nothing
    /// worth a graceful stop.
    func stop() { child.kill9() }
    func kill9() { child.kill9() }

    deinit { child.kill9() }
}
