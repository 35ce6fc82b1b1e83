import Foundation
import Glibc
import Testing
import UnderstudyPosix

/// The daemons stream a growing journal without changing their memory map (`Allocator`):
/// a thread inside `mprotect` or `mmap` waits on the map's locks, and one such wait stalled
/// replication for 0.87 s. `strace` attached to a real keeper and follower counts the calls
/// while 200k writes go through the tap; with glibc's defaults the keeper alone makes
/// hundreds.
@Suite("memory map", .serialized)
struct MemoryMapTests {
    static let mapCalls: Set<String> = ["brk", "mmap", "munmap", "mprotect", "mremap"]
    static let traced = mapCalls.union(["read", "recvfrom"])

    /// Attaching to a running process needs strace and ptrace rights (root, or
    /// `kernel.yama.ptrace_scope` 0); elsewhere the test skips with this reason.
    static let unavailable: String? = {
        guard let strace = Paths.which("strace") else { return "strace not installed (apt-get install strace)" }
        guard let sleeper = try? Subprocess("/bin/sleep", ["5"]) else { return "cannot start a process to trace" }
        defer { sleeper.stop() }
        let r = try? Subprocess.run(strace, ["-e", "trace=none", "-p", String(sleeper.pid)], timeoutMs: 300)
        if let out = r?.output, out.contains("Operation not permitted") { return "strace may not attach here: \(out)" }
        return nil
    }()

    @Test(.enabled(if: unavailable == nil, "\(unavailable ?? "")"))
    func aGrowingJournalLeavesTheMemoryMapAlone() throws {
        let h = try PairHarness()
        defer { h.stop() }
        // Every thread started and its first allocations made before counting starts.
        try h.write(0..<20_000, prefix: "warm")
        try h.waitCaughtUp()

        let dir = Paths.tempDir("strace")
        let pids = [h.keeper!.pid, h.follower!.pid]
        let strace = try Subprocess(Paths.which("strace")!,
                                    ["-f", "-c", "-e", "trace=" + Self.traced.sorted().joined(separator: ","), "-o", dir + "/counts"]
                                        + pids.flatMap { ["-p", String($0)] },
                                    stdout: .file(dir + "/strace.log"), stderr: .file(dir + "/strace.log"))
        defer { strace.stop() }
        usleep(500_000)  // strace attaches to every thread before the writes begin
        try h.write(0..<200_000, prefix: "grow")
        try h.waitCaughtUp()
        strace.stop()

        let counts = Self.parse((try? String(contentsOfFile: dir + "/counts", encoding: .utf8)) ?? "")
        let reads = (counts["read"] ?? 0) + (counts["recvfrom"] ?? 0)
        #expect(reads > 1000, "strace saw the daemons read only \(reads) times: not attached? \(counts)")
        let changes = counts.filter { Self.mapCalls.contains($0.key) && $0.value > 0 }
        #expect(changes.isEmpty, "memory-map calls while the journal grew by 200k records: \(changes)")
    }

    @Test func anOperatorsMallocTunablesStand() {
        // Returns before any mallopt, so it leaves this test process's allocator alone.
        let env = ["GLIBC_TUNABLES": "glibc.malloc.arena_max=8"]
        #expect(Allocator.holdMemoryMapSteady(environment: env) == .leftToOperator)
    }

    /// `strace -c`'s table: calls per syscall (the fourth column; errors may follow).
    static func parse(_ table: String) -> [String: Int] {
        var out: [String: Int] = [:]
        for line in table.split(separator: "\n") {
            let f = line.split(separator: " ")
            guard f.count >= 5, let name = f.last, traced.contains(String(name)), let calls = Int(f[3]) else { continue }
            out[String(name)] = calls
        }
        return out
    }
}
