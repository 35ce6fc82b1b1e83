import CLinuxEvents
import Foundation

/// Starts a named OS thread for blocking work.
///
/// Understudy's I/O is blocking sockets on threads (DESIGN §8: 17–22 µs round trips) rather
/// than the 2-thread cooperative pool, which blocking calls would starve.
public enum Threads {
    @discardableResult
    public static func start(_ name: String, _ body: @escaping @Sendable () -> Void) -> Thread {
        // The kernel's name for the thread (at most 15 bytes), so `top -H`, `ps -L` and `perf`
        // tell the tap's loops from its sender; Foundation's `Thread.name` does not set it.
        let t = Thread {
            _ = ule_set_thread_name(name)
            body()
        }
        t.name = name
        t.stackSize = 1 << 20
        t.start()
        return t
    }
}
