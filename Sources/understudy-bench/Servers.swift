import Foundation
import MemcacheClient
import UnderstudyPosix

/// Processes the benchmark starts and stops by pid: memcached, the understudy binary, redis,
/// twemproxy. Everything listens on loopback only.
final class Spawned {
    let process: Subprocess
    let name: String

    init(_ exe: String, _ args: [String], name: String, log: String) throws {
        self.name = name
        process = try Subprocess(exe, args, stdout: .file(log), stderr: .file(log))
        Children.live.withLock { $0[process.pid] = process }
    }

    var pid: Int32 { process.pid }

    func stop() {
        process.kill(SIGKILL)
        process.wait()
        Children.live.withLock { $0[process.pid] = nil }
    }

    /// Resident set size in KiB, from /proc.
    var rssKiB: Int {
        guard let s = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8) else { return 0 }
        for line in s.split(separator: "\n") where line.hasPrefix("VmRSS:") {
            return Int(line.split(separator: " ").dropFirst().first ?? "0") ?? 0
        }
        return 0
    }

    /// CPU time used so far (user + system, all threads), in microseconds, from /proc.
    var cpuMicros: Double {
        guard let s = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
              let close = s.lastIndex(of: ")") else { return 0 }
        // Fields after the command name; utime and stime are fields 14 and 15 of the line.
        let f = s[s.index(after: close)...].split(separator: " ")
        guard f.count > 12, let u = Double(f[11]), let k = Double(f[12]) else { return 0 }
        return (u + k) * 1e6 / Double(sysconf(Int32(_SC_CLK_TCK)))
    }

    deinit { stop() }
}

/// Every process the bench started and has not stopped. An interrupted run (Ctrl-C, or a
/// CI job's timeout) used to leave them all running — memcacheds, Redis, daemons — since
/// only the bench's normal exit path stopped them; now the signal does too.
enum Children {
    static let live = Monitor<[pid_t: Subprocess]>([:])

    /// Call first thing, before any thread starts: the threads inherit the blocked mask, so
    /// only this one receives SIGINT and SIGTERM (see `Signals`).
    static func stopAllOnTermination() {
        Signals.blockTermination()
        Threads.start("bench-signals") {
            let sig = Signals.waitForTermination()
            let all = live.withLock { $0 }
            for p in all.values {
                p.kill(SIGKILL)
                p.wait()
            }
            log("stopped by signal \(sig): stopped the \(all.count) processes it had started")
            exit(128 + sig)
        }
    }
}

enum Env {
    static let dir: String = {
        let d = NSTemporaryDirectory() + "understudy-bench-\(getpid())"
        try? FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true)
        return d
    }()

    static func which(_ tool: String) -> String? {
        for d in ["/usr/bin", "/usr/sbin", "/usr/local/bin", "/bin"] where FileManager.default.isExecutableFile(atPath: "\(d)/\(tool)") {
            return "\(d)/\(tool)"
        }
        return nil
    }

    static var understudy: String {
        URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().appendingPathComponent("understudy").path
    }

    static func port() -> UInt16 {
        guard let l = try? Listener.tcp(Endpoint(host: "127.0.0.1", port: 0)) else { return 0 }
        defer { l.close() }
        return l.port
    }

    static func memcached(memoryMB: Int = 2048) throws -> (Spawned, Endpoint) {
        guard let bin = which("memcached") else { throw BenchError("memcached not installed") }
        let p = port()
        let s = try Spawned(bin, ["-p", String(p), "-l", "127.0.0.1", "-U", "0", "-m", String(memoryMB), "-t", "2"]
                            + (getuid() == 0 ? ["-u", "root"] : []), name: "memcached-\(p)", log: "\(dir)/memcached-\(p).log")
        let e = Endpoint(host: "127.0.0.1", port: p)
        try waitConnectable(e)
        return (s, e)
    }

    static func waitConnectable(_ e: Endpoint) throws { try waitConnectable(.tcp(e)) }

    /// Waits up to 5 s for something to accept at `address`, a port or a socket path.
    static func waitConnectable(_ address: ListenAddress) throws {
        for _ in 0..<500 {
            let s: Socket? = switch address {
            case .tcp(let e): try? Socket.connect(to: e, timeoutMs: 100)
            case .unix(let path): try? Socket.connect(unixPath: path)
            }
            if let s { s.close(); return }
            usleep(10_000)
        }
        throw BenchError("\(address) did not come up")
    }

    /// Runs a command to completion; returns stdout.
    static func run(_ exe: String, _ args: [String]) throws -> String {
        let p = try Subprocess(exe, args, stdout: .pipe, stderr: .null)
        let (out, _) = p.collectOutput(deadlineMs: Clock.monotonicMs() + 600_000)
        p.wait()
        return String(decoding: out, as: UTF8.self)
    }
}

struct BenchError: Error, CustomStringConvertible {
    let description: String
    init(_ d: String) { description = d }
}
