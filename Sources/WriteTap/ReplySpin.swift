/// Whether a tap loop that memcached owes a reply polls for it without sleeping, and for how
/// long: the adaptive spin of glibc's `PTHREAD_MUTEX_ADAPTIVE_NP` and of Linux's
/// `net.core.busy_poll`, applied to one round trip to memcached.
///
/// A loop that sleeps in `epoll_wait` while memcached works pays a wake-up when the reply
/// lands, and on these virtual machines a wake-up of an idle thread costs more than the
/// round trip itself. Polling for up to `budget` (30 µs) instead took a one-connection set
/// through the tap from 17.1k to 19.2k per second and its p50 from 56 to 49 µs
/// (`understudy-bench tap`, 3 runs each), at 4 µs more of the tap's CPU per request; 50 µs
/// bought nothing more. Busy loops rarely spin: a loop with other clients ready finds events
/// on its first poll.
///
/// A spin that the reply outlasts was wasted, and so is every spin while memcached is slow,
/// so a miss makes the loop sleep at once for the next 2, 4, … 64 waits; a reply caught
/// within the budget ends the back-off.
struct ReplySpin: Sendable {
    /// How long one spin may poll (ns); 0 never spins.
    let budget: UInt64
    private var misses = 0
    private var skips = 0

    static let maxBackoffShift = 6

    init(budgetNanos: UInt64) {
        budget = budgetNanos
    }

    /// Whether this wait should spin first. Counts down a back-off as a side effect.
    mutating func shouldSpin() -> Bool {
        guard budget > 0 else { return false }
        if skips > 0 {
            skips -= 1
            return false
        }
        return true
    }

    /// Books a spin's outcome: `caught` if something became ready within the budget.
    mutating func spun(caught: Bool) {
        if caught {
            misses = 0
        } else {
            misses = min(misses + 1, Self.maxBackoffShift)
            skips = 1 << misses
        }
    }
}
