import Glibc
import JournalWire
import Testing
@testable import UnderstudyCore
import UnderstudyPosix

/// A keeper and a passive node in this process, in sync, whose active memcached is then
/// stopped (SIGSTOP) with one record in flight: the follower's copy of it blocks, as on a
/// host that vanished mid-reply (connections open, nothing answers). Promotions from here
/// meet a drain that cannot finish.
final class BlockedCopy {
    let active: MemcachedServer
    let local: MemcachedServer
    let keeper: Node
    let passive: Node
    private let tap: JournalChannel

    init() throws {
        active = try MemcachedServer()
        local = try MemcachedServer()
        let port = Ports.free()
        keeper = try TapHarness.keeper(dir: Paths.tempDir("blocked"), port: port, memcached: active.address,
                                       settings: [("on-local-failure", "none")])
        passive = try RoleTests.passive(memcached: local.address, peer: "127.0.0.1:\(port)", peerMemcached: active.address,
                                        settings: [("on-active-failure", "none")])
        tap = try PairHarness.rawTap(to: Endpoint(host: "127.0.0.1", port: port), id: "blocked", wantsApplied: false)
        guard waitUntil(20, { self.passive.status.follower?.inSync == true }) else { throw TestFailure("the passive never got in sync") }
        try active.child.pause()
        try tap.send(.records([TapRecord(seq: 1, op: .write, key: Array("blocked".utf8))]))
        // Journaled, received by the follower, and not applied: its copy is stuck on the active.
        let received = waitUntil(10) {
            guard let f = self.passive.status.follower else { return false }
            return f.receivedOffset > f.appliedOffset
        }
        guard received else { throw TestFailure("the follower never received the record") }
    }

    deinit {
        active.child.resume()
        tap.close()
        passive.stop()
        keeper.stop()
        active.stop()
        local.stop()
    }
}
