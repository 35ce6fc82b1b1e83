import Foundation
import Glibc
import Testing
import UnderstudyPosix

/// The spawner every hook, test fixture and benchmark uses (it replaced Foundation's Process,
/// whose waitUntilExit hung a CI run).
@Suite("subprocesses")
struct SubprocessTests {
    @Test func exitCodesSignalsAndOutput() throws {
        let r = try Subprocess.run("/bin/sh", ["-c", "echo out; echo err >&2; exit 3"], timeoutMs: 10_000)
        #expect(r.exit.code == 3 && r.exit.signal == nil)
        #expect(r.output.contains("out") && r.output.contains("err"))
        #expect(!r.timedOut)
        let killed = try Subprocess.run("/bin/sh", ["-c", "kill -9 $$"], timeoutMs: 10_000)
        #expect(killed.exit.signal == SIGKILL)
        #expect(killed.exit.code == 128 + SIGKILL)
    }

    /// A hung hook must not hang the daemon: the timeout kills the whole group, including a
    /// grandchild that still holds the output pipe open.
    @Test func timeoutKillsTheWholeGroup() throws {
        let start = Clock.monotonicMs()
        let r = try Subprocess.run("/bin/sh", ["-c", "sleep 30 & sleep 30; echo never"], timeoutMs: 500)
        #expect(r.timedOut)
        #expect(r.exit.signal == SIGKILL)
        #expect(!r.output.contains("never"))
        #expect(Clock.monotonicMs() - start < 20_000, "bounded by the timeout, not by the sleeps")
    }

    /// The shell exits at once but leaves a grandchild holding the output pipe: the timeout
    /// must still reach it through the group, although the leader was already reaped.
    @Test func timeoutReachesAGrandchildAfterTheLeaderExited() throws {
        let r = try Subprocess.run("/bin/sh", ["-c", "sleep 30 & echo $!"], timeoutMs: 500)
        #expect(r.timedOut)
        let pid = try #require(Int32(r.output.trimmingCharacters(in: .whitespacesAndNewlines)))
        let gone = waitUntil(10) {
            guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8) else { return true }
            return stat.split(separator: ")").last?.split(separator: " ").first == "Z"
        }
        #expect(gone, "grandchild \(pid) survived the timeout")
    }

    /// The daemon blocks SIGTERM for sigwait and ignores SIGPIPE; a child must not inherit
    /// either, or `kill -TERM` of a hook would do nothing.
    @Test func childrenStartWithACleanSignalState() throws {
        var set = sigset_t()
        sigemptyset(&set)
        sigaddset(&set, SIGTERM)
        var old = sigset_t()
        pthread_sigmask(SIG_BLOCK, &set, &old)
        defer { pthread_sigmask(SIG_SETMASK, &old, nil) }
        let r = try Subprocess.run("/bin/sh", ["-c", "grep -E '^(SigBlk|SigIgn)' /proc/self/status"], timeoutMs: 10_000)
        let blocked = r.output.split(separator: "\n").first { $0.hasPrefix("SigBlk") }?.split(separator: "\t").last
        #expect(blocked.map { UInt64($0, radix: 16) ?? 1 } == 0, "child's blocked set: \(r.output)")
    }

    @Test func environmentStdinAndFiles() throws {
        let dir = Paths.tempDir("spawn")
        try "from a file\n".write(toFile: dir + "/in", atomically: true, encoding: .utf8)
        let r = try Subprocess.run("/bin/sh", ["-c", "cat; echo $GREETING"], environment: ["GREETING": "hi"],
                                   stdin: .file(dir + "/in"), timeoutMs: 10_000)
        #expect(r.output == "from a file\nhi\n")
        let p = try Subprocess("/bin/sh", ["-c", "echo logged"], stdout: .file(dir + "/log"))
        #expect(p.wait(timeoutMs: 10_000)?.code == 0)
        #expect(try String(contentsOfFile: dir + "/log", encoding: .utf8) == "logged\n")
        #expect(throws: SystemError.self) { _ = try Subprocess("/nonexistent/tool", []) }
    }
}
