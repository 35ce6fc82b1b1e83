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
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/bin/sh")
        p.arguments = ["-c", command]
        p.environment = ProcessInfo.processInfo.environment.merging(["UNDERSTUDY_REASON": reason]) { $1 }
        let out = Pipe()
        p.standardOutput = out
        p.standardError = out
        do { try p.run() } catch {
            Log.error("hook", "\(name): cannot run '\(command)': \(error)")
            return nil
        }
        let pid = p.processIdentifier
        let done = DispatchSemaphore(value: 0)
        let timedOut = Monitor(false)
        DispatchQueue.global().async {
            if done.wait(timeout: .now() + .milliseconds(timeoutMs)) == .timedOut {
                timedOut.update { $0 = true }
                kill(pid, SIGKILL)
            }
        }
        let output = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        p.waitUntilExit()
        done.signal()
        let tail = output.split(separator: "\n").suffix(5).joined(separator: " | ")
        if timedOut.withLock({ $0 }) {
            Log.error("hook", "\(name): '\(command)' killed after \(timeoutMs) ms; output: \(tail)")
            return nil
        }
        let status = p.terminationStatus
        if status == 0 {
            Log.info("hook", "\(name): '\(command)' succeeded; output: \(tail)")
        } else {
            Log.error("hook", "\(name): '\(command)' exited \(status); output: \(tail)")
        }
        return status
    }
}
