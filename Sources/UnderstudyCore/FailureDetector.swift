import Glibc
import MemcacheClient
import UnderstudyPosix

/// Probes a memcached and acts once when it has failed `failures` times in a row (so within
/// `failures × interval`). Re-arms after the next success, so one outage runs one hook.
///
/// With `hostFailuresToCluster`, an outage whose latest probe could not reach the host at all
/// (the connect timed out, or no route) does not act, and says so once: that is a node or
/// network failure, which the cluster manager detects itself. Running heartbeat's
/// `hb_takeover` while heartbeat was taking over on its own broke that takeover: in the
/// namespace lab, each run in which the cut-off passive never took over was one where the
/// hook ran during heartbeat's takeover, and heartbeat logged `NV failure (msgfromsteam)`
/// (a garbled message on its FIFO) and acquired nothing. A host that refuses (memcached
/// dead) or a memcached that accepts and never answers (hung) is what only this probe sees,
/// and still acts.
final class FailureDetector: Sendable {
    struct State {
        var consecutive = 0
        var fired = false
        var stopping = false
        var lastError = ""
        var deferredToCluster = false
    }

    let target: Endpoint
    let intervalMs: Int
    let failures: Int
    let hostFailuresToCluster: Bool
    let state = Monitor(State())
    let onFailure: @Sendable (String) -> Void

    init(target: Endpoint, intervalMs: Int, failures: Int, hostFailuresToCluster: Bool = false,
         onFailure: @escaping @Sendable (String) -> Void) {
        self.target = target
        self.intervalMs = intervalMs
        self.failures = failures
        self.hostFailuresToCluster = hostFailuresToCluster
        self.onFailure = onFailure
    }

    /// The host itself cannot be reached: no answer to the connect at all, or no route to it.
    /// A refused connect means the host is up and memcached is not.
    static func isHostUnreachable(_ error: MemcacheError) -> Bool {
        guard case .connect(let e) = error else { return false }
        return [ETIMEDOUT, EHOSTUNREACH, ENETUNREACH, EHOSTDOWN].contains(e.errno)
    }

    func start(_ name: String) { Threads.start(name) { [self] in loop() } }
    func stop() { state.update { $0.stopping = true } }

    var consecutiveFailures: Int { state.withLock { $0.consecutive } }

    /// One `version` round trip, connecting first if there is no connection; a failure
    /// drops the connection.
    private func probe(_ conn: inout MemcacheConnection?) -> MemcacheError? {
        do {
            if conn == nil { conn = try MemcacheConnection(target, connectTimeoutMs: intervalMs, ioTimeoutMs: intervalMs) }
            _ = try conn!.version()
            return nil
        } catch {
            conn?.close()
            conn = nil
            return error
        }
    }

    func loop() {
        var conn: MemcacheConnection?
        while !state.withLock({ $0.stopping }) {
            let reused = conn != nil
            var failure = probe(&conn)
            // A probe on a connection opened earlier cannot tell a hung memcached from a host
            // gone since: both leave the reply missing. A fresh connect can, so the outage is
            // judged on that, whatever `failures` is.
            if reused && failure != nil && hostFailuresToCluster {
                failure = probe(&conn)
            }
            enum Verdict { case act(String), leaveToCluster(String), answersAgain }
            let verdict = state.update { s -> Verdict? in
                guard !s.stopping else { return nil }
                guard let error = failure else {
                    let was = s.fired || s.deferredToCluster
                    s.consecutive = 0
                    s.fired = false
                    s.deferredToCluster = false
                    return was ? .answersAgain : nil
                }
                s.consecutive += 1
                s.lastError = error.description
                guard s.consecutive >= failures && !s.fired else { return nil }
                if hostFailuresToCluster && Self.isHostUnreachable(error) {
                    if s.deferredToCluster { return nil }
                    s.deferredToCluster = true
                    return .leaveToCluster("\(target) cannot be reached at all (\(error)): a node or network failure, "
                                           + "which the cluster manager detects itself; not acting on it")
                }
                s.fired = true
                return .act("\(target) failed \(s.consecutive) probes in a row (last: \(error))")
            }
            switch verdict {
            case .act(let why): onFailure(why)
            case .leaveToCluster(let why): Log.warning("probe", why)
            case .answersAgain: Log.info("probe", "\(target) answers again")
            case nil: break
            }
            Clock.sleep(milliseconds: intervalMs)
        }
        conn?.close()
    }
}
