import Foundation
import Glibc
import UnderstudyPosix

/// A process a test starts and must stop, by pid. Output goes to a log file that tests show
/// when something fails. A watchdog kills it if a test forgets or hangs.
final class ChildProcess: @unchecked Sendable {
    let process: Subprocess
    let logPath: String
    let name: String

    /// `launcher` (e.g. `ip netns exec NS`) execs the program in place, so `pid` stays the
    /// program's own.
    init(_ executable: String, _ args: [String], name: String, logDir: String, launcher: [String] = []) throws {
        self.name = name
        logPath = "\(logDir)/\(name).log"
        _ = FileManager.default.createFile(atPath: logPath, contents: nil)
        let argv = launcher + [executable] + args
        process = try Subprocess(argv[0], Array(argv.dropFirst()), stdout: .file(logPath), stderr: .file(logPath))
        let pid = process.pid
        // No test runs anywhere near this long; a leaked child must not outlive the run.
        DispatchQueue.global().asyncAfter(deadline: .now() + 900) { kill(pid, SIGKILL) }
    }

    var pid: Int32 { process.pid }
    var isRunning: Bool { process.isRunning }

    var log: String { (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? "" }

    /// Waits until the log contains `text`, or throws after `timeout` seconds.
    func waitForLog(_ text: String, timeout: Double = 20) throws {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if log.contains(text) { return }
            if let exit = process.exit { throw TestFailure("\(name) \(exit) before logging '\(text)':\n\(log)") }
            usleep(20_000)
        }
        throw TestFailure("\(name) did not log '\(text)' within \(timeout) s:\n\(log)")
    }

    /// SIGTERM, then SIGKILL if it has not exited within `grace` seconds.
    @discardableResult
    func stop(grace: Double = 10) -> Subprocess.Exit {
        process.stop(graceMs: Int(grace * 1000))
    }

    func kill9() {
        process.kill(SIGKILL)
        process.wait()
    }
}

struct TestFailure: Error, CustomStringConvertible {
    let description: String
    init(_ d: String) { description = d }
}

enum Paths {
    /// Where `swift build` put the `understudy` binary (next to the test bundle).
    static var productsDir: String {
        Bundle.main.bundleURL.path
    }

    static var understudy: String { productsDir + "/understudy" }

    static func which(_ tool: String) -> String? {
        for dir in (ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin").split(separator: ":") {
            let p = "\(dir)/\(tool)"
            if FileManager.default.isExecutableFile(atPath: p) { return p }
        }
        for p in ["/usr/bin/\(tool)", "/usr/sbin/\(tool)", "/usr/local/bin/\(tool)"] where FileManager.default.isExecutableFile(atPath: p) {
            return p
        }
        return nil
    }

    /// A python3 that can import pymemcache (PATH's first, else Debian's).
    static func pythonWithPymemcache() throws -> String {
        for candidate in [which("python3"), "/usr/bin/python3"].compactMap({ $0 }) {
            if (try? runTool(candidate, ["-c", "import pymemcache"])) != nil { return candidate }
        }
        throw TestFailure("no python3 with pymemcache (apt-get install python3-pymemcache)")
    }

    static func tempDir(_ label: String) -> String {
        let dir = NSTemporaryDirectory() + "understudy-\(label)-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try? FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        return dir
    }
}
