import Glibc

/// State guarded by a mutex, with a condition variable to wait for it to change.
///
/// `Synchronization.Mutex` has no condition variable, and the tap's sync mode and the sender
/// threads need "wait until X, or until a deadline" — the classic monitor.
public final class Monitor<State>: @unchecked Sendable {
    /// Only touched under the mutex, which already makes every access exclusive; Swift's
    /// runtime check would repeat that on every lock.
    @exclusivity(unchecked) private var state: State
    private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private let cond = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)

    public init(_ initial: State) {
        state = initial
        pthread_mutex_init(mutex, nil)
        var attr = pthread_condattr_t()
        pthread_condattr_init(&attr)
        // Deadlines are monotonic: a wall-clock step must not stretch or cut a sync timeout.
        pthread_condattr_setclock(&attr, CLOCK_MONOTONIC)
        pthread_cond_init(cond, &attr)
        pthread_condattr_destroy(&attr)
    }

    deinit {
        pthread_cond_destroy(cond)
        pthread_mutex_destroy(mutex)
        cond.deallocate()
        mutex.deallocate()
    }

    public func withLock<R>(_ body: (inout State) throws -> R) rethrows -> R {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return try body(&state)
    }

    /// Mutates and wakes every waiter.
    public func update<R>(_ body: (inout State) -> R) -> R {
        pthread_mutex_lock(mutex)
        defer {
            pthread_cond_broadcast(cond)
            pthread_mutex_unlock(mutex)
        }
        return body(&state)
    }

    /// Mutates, and wakes the waiters only if `body` says the change matters to them: on hot
    /// paths a needless wake-up is a context switch per operation.
    public func update<R>(signalling body: (inout State) -> (R, wake: Bool)) -> R {
        pthread_mutex_lock(mutex)
        let (r, wake) = body(&state)
        if wake { pthread_cond_broadcast(cond) }
        pthread_mutex_unlock(mutex)
        return r
    }

    /// Waits until `ready` holds or `timeoutMs` passes (nil: forever), then runs `body` under
    /// the lock. `body` learns whether the condition held.
    public func wait<R>(until ready: (State) -> Bool, timeoutMs: Int?, _ body: (inout State, Bool) -> R) -> R {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        let deadline = timeoutMs.map { Clock.monoNanos() + UInt64(max($0, 0)) * 1_000_000 }
        while !ready(state) {
            if let deadline {
                let now = Clock.monoNanos()
                if now >= deadline { return body(&state, false) }
                var ts = timespec(tv_sec: Int(deadline / 1_000_000_000), tv_nsec: Int(deadline % 1_000_000_000))
                pthread_cond_timedwait(cond, mutex, &ts)
            } else {
                pthread_cond_wait(cond, mutex)
            }
        }
        return body(&state, true)
    }

    /// Waits until `done` holds, for as long as `progress` keeps moving: at most `stallMs`
    /// without a change and `timeoutMs` in all. True if `done` held. For waits on work that
    /// may be slow and may be stuck (a follower applying what is left): a fixed timeout cut
    /// short a slow one that was getting there, or waited out a stuck one for nothing.
    /// Progress is sampled at the end of each slice, so it may move without waking anyone.
    public func wait<P: Equatable>(until done: (State) -> Bool, progressing progress: (State) -> P,
                                   stallMs: Int, timeoutMs: Int) -> Bool {
        let deadline = Clock.monoNanos() + UInt64(max(timeoutMs, 0)) * 1_000_000
        var last = withLock { progress($0) }
        while true {
            let now = Clock.monoNanos()
            let slice = now < deadline ? min(stallMs, Int((deadline - now) / 1_000_000) + 1) : 0
            let (ok, moved) = wait(until: done, timeoutMs: slice) { s, ok in (ok, progress(s)) }
            if ok { return true }
            if moved == last || Clock.monoNanos() >= deadline { return false }
            last = moved
        }
    }
}
