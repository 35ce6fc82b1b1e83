import Glibc
import Synchronization
import Testing
import UnderstudyPosix

/// Closing a socket another thread is reading: the reader must end, and never read from the
/// socket the kernel gives the old descriptor number to next. A follower or tap closes its
/// journal connection while its reader thread runs, then reconnects at once.
@Suite("socket close under a reader")
struct SocketCloseTests {
    /// Our side of a loopback pair whose far side writes `fill` until it fails (our side
    /// closed) or stalls for 2 s, then closes.
    static func flooded(by listener: Listener, fill: UInt8) throws -> Socket {
        let ours = try Socket.connect(to: Endpoint(host: "127.0.0.1", port: listener.port), timeoutMs: 2000)
        let theirs = try listener.accept()
        try theirs.setIOTimeout(milliseconds: 2000)
        Threads.start("flood") {
            let chunk = [UInt8](repeating: fill, count: 4096)
            // Ends when our side closes (EPIPE/ECONNRESET) or stalls for the timeout.
            for _ in 0..<100_000 { if (try? theirs.write(chunk)) == nil { break } }
            theirs.close()
        }
        return ours
    }

    /// `abort` resets the connection, where `close` ends the stream: the tap's upstream relies
    /// on it so that a write queued behind a cut link is dropped, not delivered after the link
    /// heals (and after its key was journaled and copied).
    @Test func abortResetsWhereCloseEndsTheStream() throws {
        let listener = try Listener.tcp(Endpoint(host: "127.0.0.1", port: 0))
        defer { listener.close() }
        for abort in [false, true] {
            let ours = try Socket.connect(to: Endpoint(host: "127.0.0.1", port: listener.port), timeoutMs: 2000)
            let theirs = try listener.accept()
            defer { theirs.close() }
            try theirs.setIOTimeout(milliseconds: 2000)
            if abort { ours.abort() } else { ours.close() }
            var buf = [UInt8](repeating: 0, count: 16)
            var n = -1
            var failure: Int32 = 0
            do { n = try buf.withUnsafeMutableBytes { try theirs.read(into: $0) } } catch { failure = (error as? SystemError)?.errno ?? -1 }
            if abort {
                #expect(failure == ECONNRESET, "after abort the peer read \(n) bytes, errno \(failure); expected a reset")
            } else {
                #expect(n == 0 && failure == 0, "after close the peer read \(n) bytes, errno \(failure); expected the end of the stream")
            }
        }
    }

    /// A follower's stop trips its `Interrupter`: a read blocked on a silent peer (a host that
    /// vanished) ends at once instead of at its I/O timeout, and a connection that joins after
    /// the trip is shut as it joins, so none opened during a stop carries anything.
    @Test func anInterrupterBreaksABlockedReadAndEveryLaterMember() throws {
        let listener = try Listener.tcp(Endpoint(host: "127.0.0.1", port: 0))
        defer { listener.close() }
        let interrupter = Interrupter()
        let blocked = try Socket.connect(to: Endpoint(host: "127.0.0.1", port: listener.port), timeoutMs: 2000)
        let silent = try listener.accept()
        defer { blocked.close(); silent.close() }
        try blocked.setIOTimeout(milliseconds: 10_000)
        interrupter.add(blocked)
        let ended = Monitor<Double?>(nil)
        Threads.start("blocked-reader") {
            let start = Clock.monoNanos()
            var buf = [UInt8](repeating: 0, count: 16)
            _ = try? buf.withUnsafeMutableBytes { try blocked.read(into: $0) }
            ended.update { $0 = Double(Clock.monoNanos() - start) / 1e9 }
        }
        usleep(200_000)
        #expect(ended.withLock { $0 } == nil, "the read was meant to be blocked on the silent peer")
        interrupter.trip()
        let took = ended.wait(until: { $0 != nil }, timeoutMs: 5000) { s, _ in s }
        #expect(took != nil && took! < 5, "the blocked read ended after \(took.map { "\($0) s" } ?? "more than 5 s")")

        let later = try Socket.connect(to: Endpoint(host: "127.0.0.1", port: listener.port), timeoutMs: 2000)
        let laterPeer = try listener.accept()
        defer { later.close(); laterPeer.close() }
        interrupter.add(later)
        try laterPeer.setIOTimeout(milliseconds: 2000)
        var buf = [UInt8](repeating: 0, count: 16)
        let n = try buf.withUnsafeMutableBytes { try laterPeer.read(into: $0) }
        #expect(n == 0, "a member added after the trip was shut: its peer reads the end of the stream")
    }

    @Test func aReaderNeverReadsTheSocketThatReusedItsDescriptor() throws {
        let listener = try Listener.tcp(Endpoint(host: "127.0.0.1", port: 0))
        defer { listener.close() }
        var reused = 0
        for _ in 0..<100 {
            let a = try Self.flooded(by: listener, fill: 0x41)
            let foreign = Atomic<Bool>(false)
            let done = Monitor(false)
            Threads.start("reader") {
                var buf = [UInt8](repeating: 0, count: 512)
                // Small reads, so the reader is as often between calls as inside one.
                for _ in 0..<1_000_000 {
                    let n = (try? buf.withUnsafeMutableBytes { try a.read(into: $0) }) ?? 0
                    if n == 0 { break }
                    if buf[0..<n].contains(where: { $0 != 0x41 }) { foreign.store(true, ordering: .relaxed) }
                }
                done.update { $0 = true }
            }
            Clock.sleep(microseconds: 200)
            let number = a.fd
            a.close()
            // The lowest free number is the one just released, if it was.
            let b = try Self.flooded(by: listener, fill: 0x42)
            if b.fd == number { reused += 1 }
            let ended = done.wait(until: { $0 }, timeoutMs: 5000) { s, _ in s }
            b.close()
            #expect(ended, "the reader was not woken by close()")
            let stolen = foreign.load(ordering: .relaxed)
            #expect(!stolen, "the reader read another socket's bytes (descriptor \(number))")
            if stolen { break }
        }
        // Not a condition of correctness, but the case this test exists for must have occurred.
        #expect(reused > 0, "no new socket ever reused a closed socket's number; the race was not exercised")
    }

    @Test func callsAfterCloseFailWithEBADF() throws {
        let listener = try Listener.tcp(Endpoint(host: "127.0.0.1", port: 0))
        defer { listener.close() }
        let a = try Socket.connect(to: Endpoint(host: "127.0.0.1", port: listener.port), timeoutMs: 2000)
        a.close()
        a.close()
        #expect(throws: SystemError.self) { try a.write([1, 2, 3]) }
        do {
            _ = try a.waitReadable(timeoutMs: 10)
            Issue.record("waitReadable on a closed socket returned")
        } catch {
            #expect(error.errno == EBADF)
        }
    }
}
