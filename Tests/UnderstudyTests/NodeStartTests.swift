import Glibc
import Testing
import UnderstudyCore

/// A node that cannot start says why, with the errno where a system call refused, so the
/// caller (the CLI's exit message, the test harness's port retry) acts on the cause.
@Suite("node start")
struct NodeStartTests {
    @Test func aTakenJournalPortIsRefusedWithItsErrno() throws {
        let h = try TapHarness()
        defer { h.stop() }
        let dir = Paths.tempDir("second-node")
        do {
            let n = try TapHarness.keeper(dir: dir, port: h.journalPort, memcached: h.memcached.address)
            n.stop()
            Issue.record("a second node started on taken port \(h.journalPort)")
        } catch let e as Node.StartError {
            #expect(e.errno == EADDRINUSE, "\(e)")
            #expect(e.description.contains("cannot listen"), "\(e)")
        }
    }
}
