import Glibc
import Testing
import UnderstudyPosix
@testable import WriteTap

/// The tap loop's wait for memcached's reply: spin while spins pay, back off while they
/// don't, and a poll that ends by itself.
@Suite("reply spin")
struct ReplySpinTests {
    /// How many of the next `waits` waits would spin, booking each spin as `caught`.
    static func spins(_ s: inout ReplySpin, waits: Int, caught: Bool) -> Int {
        var n = 0
        for _ in 0..<waits where s.shouldSpin() {
            n += 1
            s.spun(caught: caught)
        }
        return n
    }

    @Test func aZeroBudgetNeverSpins() {
        var s = ReplySpin(budgetNanos: 0)
        #expect(Self.spins(&s, waits: 100, caught: true) == 0)
    }

    @Test func caughtRepliesKeepSpinning() {
        var s = ReplySpin(budgetNanos: 30_000)
        #expect(Self.spins(&s, waits: 100, caught: true) == 100)
    }

    /// How many waits sleep at once before one spins again (at most 1000).
    static func waitsSkipped(_ s: inout ReplySpin) -> Int {
        var skipped = 0
        while !s.shouldSpin() && skipped < 1000 { skipped += 1 }
        return skipped
    }

    @Test func missesBackOffExponentiallyUpToACap() {
        var s = ReplySpin(budgetNanos: 30_000)
        let first = s.shouldSpin()
        #expect(first)
        s.spun(caught: false)
        // Each miss in a row sits out twice as many waits as the last, up to 64.
        var gaps: [Int] = []
        for _ in 0..<8 {
            gaps.append(Self.waitsSkipped(&s))
            s.spun(caught: false)
        }
        #expect(gaps == [2, 4, 8, 16, 32, 64, 64, 64])
    }

    @Test func aCaughtReplyResetsTheBackOff() {
        var s = ReplySpin(budgetNanos: 30_000)
        _ = s.shouldSpin()
        for _ in 0..<4 {
            s.spun(caught: false)
            _ = Self.waitsSkipped(&s)
        }
        s.spun(caught: true)
        #expect(Self.spins(&s, waits: 10, caught: true) == 10)
        // The next miss starts the back-off over: 2 waits, not 32.
        s.spun(caught: false)
        #expect(Self.waitsSkipped(&s) == 2)
    }

    @Test func pollEndsAtItsDeadlineWhenNothingIsReady() throws {
        let p = try Poller()
        var events: [Poller.Event] = []
        let start = Clock.monoNanos()
        #expect(!p.poll(untilNanos: start + 2_000_000, into: &events))
        #expect(events.isEmpty)
        #expect(Clock.monoNanos() >= start + 2_000_000)
    }

    @Test func pollReturnsWhatIsReady() throws {
        let p = try Poller()
        var events: [Poller.Event] = []
        p.wake()
        #expect(p.poll(untilNanos: Clock.monoNanos() + 10_000_000_000, into: &events))
        #expect(events.map(\.token) == [Poller.wakeToken])
    }
}
