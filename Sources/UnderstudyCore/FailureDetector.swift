import MemcacheClient
import UnderstudyPosix

/// Probes a memcached and acts once when it has failed `failures` times in a row (so within
/// `failures × interval`). Re-arms after the next success, so one outage runs one hook.
final class FailureDetector: Sendable {
    struct State {
        var consecutive = 0
        var fired = false
        var stopping = false
        var lastError = ""
    }

    let target: Endpoint
    let intervalMs: Int
    let failures: Int
    let state = Monitor(State())
    let onFailure: @Sendable (String) -> Void

    init(target: Endpoint, intervalMs: Int, failures: Int, onFailure: @escaping @Sendable (String) -> Void) {
        self.target = target
        self.intervalMs = intervalMs
        self.failures = failures
        self.onFailure = onFailure
    }

    func start(_ name: String) { Threads.start(name) { [self] in loop() } }
    func stop() { state.update { $0.stopping = true } }

    var consecutiveFailures: Int { state.withLock { $0.consecutive } }

    func loop() {
        var conn: MemcacheConnection?
        while !state.withLock({ $0.stopping }) {
            var failure: String?
            do {
                if conn == nil { conn = try MemcacheConnection(target, connectTimeoutMs: intervalMs, ioTimeoutMs: intervalMs) }
                _ = try conn!.version()
            } catch {
                conn?.close()
                conn = nil
                failure = error.description
            }
            let fire = state.update { s -> String? in
                guard !s.stopping else { return nil }
                if let error = failure {
                    s.consecutive += 1
                    s.lastError = error
                    if s.consecutive >= failures && !s.fired {
                        s.fired = true
                        return "\(target) failed \(s.consecutive) probes in a row (last: \(error))"
                    }
                } else {
                    if s.fired { Log.info("probe", "\(target) answers again") }
                    s.consecutive = 0
                    s.fired = false
                }
                return nil
            }
            if let fire { onFailure(fire) }
            Clock.sleep(milliseconds: intervalMs)
        }
        conn?.close()
    }
}
