import Foundation
import Glibc

/// Stopping a test's process with SIGSTOP. `kill` returns before a thread busy on another
/// core has stopped, and on these shared 2-core machines that window was long enough for a
/// stopped memcached to answer one more request (a test then waited 10 s for a copy to block
/// that had already finished). So `pause` waits until every thread is stopped.
extension ChildProcess {
    func pause(timeout: Double = 5) throws {
        kill(pid, SIGSTOP)
        guard waitUntil(timeout, { Self.allThreadsStopped(pid) }) else {
            throw TestFailure("\(name) (pid \(pid)) did not stop within \(timeout) s of SIGSTOP")
        }
    }

    func resume() {
        kill(pid, SIGCONT)
    }

    /// Each thread's state is the field after the command name in /proc/PID/task/TID/stat;
    /// the name may hold spaces and parentheses, so it is found after the last ')'.
    private static func allThreadsStopped(_ pid: Int32) -> Bool {
        guard let tids = try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/task"), !tids.isEmpty else { return false }
        return tids.allSatisfy { tid in
            guard let stat = try? String(contentsOfFile: "/proc/\(pid)/task/\(tid)/stat", encoding: .utf8),
                  let close = stat.lastIndex(of: ")") else { return false }
            let state = stat[stat.index(after: close)...].drop(while: { $0 == " " }).first
            return state == "T" || state == "t"
        }
    }
}
