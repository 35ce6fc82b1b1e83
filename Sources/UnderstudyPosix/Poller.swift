import CLinuxEvents
import Glibc

/// One epoll instance plus an eventfd to wake it: the readiness source of an event loop.
///
/// Readiness is level-triggered: a descriptor keeps reporting until it is drained or its
/// interest is dropped, so a loop that stops reading a peer (backpressure, end of stream)
/// must say so with `modify`, or it spins. A hang-up or error is reported whatever the
/// interest, so a descriptor the loop no longer reads or writes must be `remove`d.
/// `wake()` is the one member other threads call.
public final class Poller: Sendable {
    public struct Interest: OptionSet, Sendable, Equatable {
        public let rawValue: UInt32
        public init(rawValue: UInt32) { self.rawValue = rawValue }
        public static let read = Interest(rawValue: UInt32(ULE_EPOLLIN))
        public static let write = Interest(rawValue: UInt32(ULE_EPOLLOUT))
    }

    public struct Event: Sendable {
        public let token: UInt64
        /// Data, end of stream or an error waits: a read says which.
        public let readable: Bool
        public let writable: Bool
    }

    /// Reserved for the wake-up eventfd; callers' tokens must differ.
    public static let wakeToken = UInt64.max

    let epfd: Int32
    let wakeFD: Int32

    public init() throws(SystemError) {
        epfd = try Sys.epollCreate()
        do {
            wakeFD = try Sys.eventfd()
        } catch {
            Sys.close(epfd)
            throw error
        }
        do {
            try Sys.epollControl(epfd, Int32(ULE_CTL_ADD), wakeFD, events: Interest.read.rawValue, token: Self.wakeToken, "add wake eventfd")
        } catch {
            Sys.close(wakeFD)
            Sys.close(epfd)
            throw error
        }
    }

    deinit {
        Sys.close(wakeFD)
        Sys.close(epfd)
    }

    public func add(_ fd: Int32, token: UInt64, _ interest: Interest) throws(SystemError) {
        try Sys.epollControl(epfd, Int32(ULE_CTL_ADD), fd, events: interest.rawValue, token: token, "add fd \(fd)")
    }

    public func modify(_ fd: Int32, token: UInt64, _ interest: Interest) throws(SystemError) {
        try Sys.epollControl(epfd, Int32(ULE_CTL_MOD), fd, events: interest.rawValue, token: token, "modify fd \(fd)")
    }

    /// Forgets a descriptor; call before closing it (a closed descriptor may linger in the
    /// epoll set while a duplicate of it lives elsewhere).
    public func remove(_ fd: Int32) {
        try? Sys.epollControl(epfd, Int32(ULE_CTL_DEL), fd, events: 0, token: 0, "remove fd \(fd)")
    }

    /// Waits up to `timeoutNanos` (nil: until something happens). A wake-up is reported as
    /// an event with `wakeToken`, after draining the eventfd so it does not fire again.
    public func wait(timeoutNanos: UInt64?, into events: inout [Event]) throws(SystemError) {
        events.removeAll(keepingCapacity: true)
        // 128 keeps both buffers within the 1 KiB Swift allocates on the stack; at 256 they
        // were a heap allocation on every wait. More ready descriptors wait for the next
        // call: readiness is level-triggered.
        let max = 128
        let readMask = UInt32(ULE_EPOLLIN | ULE_EPOLLHUP | ULE_EPOLLERR | ULE_EPOLLRDHUP)
        let writeMask = UInt32(ULE_EPOLLOUT | ULE_EPOLLERR)
        var failure: SystemError?
        withUnsafeTemporaryAllocation(of: UInt64.self, capacity: max) { tokens in
            withUnsafeTemporaryAllocation(of: UInt32.self, capacity: max) { flags in
                let n: Int
                do throws(SystemError) {
                    n = try Sys.epollWait(epfd, tokens: tokens.baseAddress!, events: flags.baseAddress!, max: Int32(max), timeoutNanos: timeoutNanos.map { Int64(min($0, UInt64(Int64.max))) } ?? -1)
                } catch {
                    failure = error
                    return
                }
                for i in 0..<n {
                    if tokens[i] == Self.wakeToken { drainWake() }
                    events.append(Event(token: tokens[i], readable: flags[i] & readMask != 0, writable: flags[i] & writeMask != 0))
                }
            }
        }
        if let failure { throw failure }
    }

    /// Polls without sleeping until something is ready or the monotonic clock passes
    /// `deadlineNanos`, for a loop that expects an event within microseconds and would
    /// rather spend them than a wake-up. True if `events` holds something. An error ends the
    /// spin with nothing: the `wait` that follows reports it.
    public func poll(untilNanos deadlineNanos: UInt64, into events: inout [Event]) -> Bool {
        repeat {
            do { try wait(timeoutNanos: 0, into: &events) } catch { return false }
            if !events.isEmpty { return true }
        } while Clock.monoNanos() < deadlineNanos
        return false
    }

    /// Makes the loop's current or next `wait` return. Safe from any thread.
    public func wake() {
        var one: UInt64 = 1
        _ = withUnsafeBytes(of: &one) { try? Sys.write(wakeFD, $0, "wake eventfd") }
    }

    private func drainWake() {
        var count: UInt64 = 0
        // read(2), not recv: an eventfd is no socket. It is non-blocking, so an empty one
        // (two wakes drained at once) reports EAGAIN, which is fine to ignore.
        _ = withUnsafeMutableBytes(of: &count) { try? Sys.read(wakeFD, $0, "wake eventfd") }
    }
}
