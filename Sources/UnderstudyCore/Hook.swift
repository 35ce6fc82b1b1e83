import Foundation
import UnderstudyPosix

/// Runs an operator-configured command (`/bin/sh -c`), bounded by a timeout, and logs what
/// happened. Used to hand control to heartbeat (`hb_takeover`, `hb_standby`).
struct Hook: Sendable {
    let name: String
    let command: String
    let timeoutMs: Int

    /// Returns the exit status, or nil if it could not start or was killed at the timeout.
    @discardableResult
    func run(reason: String) -> Int32? {
        Log.warning("hook", "\(name): running '\(command)' (\(reason))")
        let env = ProcessInfo.processInfo.environment.merging(["UNDERSTUDY_REASON": reason]) { $1 }
        let result: (exit: Subprocess.Exit, output: String, timedOut: Bool)
        do {
            result = try Subprocess.run("/bin/sh", ["-c", command], environment: env, timeoutMs: timeoutMs)
        } catch {
            Log.error("hook", "\(name): cannot run '\(command)': \(error)")
            return nil
        }
        let output = result.output
        let tail = output.split(separator: "\n").suffix(5).joined(separator: " | ")
        if result.timedOut {
            Log.error("hook", "\(name): '\(command)' killed after \(timeoutMs) ms; output: \(tail)")
            return nil
        }
        let status = result.exit.code
        if status == 0 {
            Log.info("hook", "\(name): '\(command)' succeeded; output: \(tail)")
        } else {
            Log.error("hook", "\(name): '\(command)' exited \(status); output: \(tail)")
        }
        return status
    }
}
