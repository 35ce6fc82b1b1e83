import Glibc

/// Wall and monotonic time in the units the protocols use.
public enum Clock {
    /// Unix time in nanoseconds. Journal records carry this so lag can be measured across nodes
    /// (with NTP-synced clocks; on one host it is exact).
    public static func wallNanos() -> Int64 {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        return Int64(ts.tv_sec) * 1_000_000_000 + Int64(ts.tv_nsec)
    }

    public static func unixSeconds() -> Int64 { wallNanos() / 1_000_000_000 }

    /// Monotonic nanoseconds, for timeouts and rates: immune to clock steps.
    public static func monoNanos() -> UInt64 {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
    }

    /// Monotonic milliseconds, for deadlines.
    public static func monotonicMs() -> Int64 { Int64(monoNanos() / 1_000_000) }

    public static func sleep(milliseconds: Int) { sleep(microseconds: milliseconds * 1000) }

    public static func sleep(microseconds: Int) {
        var want = timespec(tv_sec: microseconds / 1_000_000, tv_nsec: (microseconds % 1_000_000) * 1000)
        var left = timespec()
        while nanosleep(&want, &left) == -1 && errno == EINTR { want = left }
    }
}
