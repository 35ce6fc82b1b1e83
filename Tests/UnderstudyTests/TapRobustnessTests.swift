import Foundation
import JournalWire
import MemcacheClient
import Testing
import UnderstudyPosix
import WriteTap
@testable import UnderstudyCore

@Suite("tap proxy under bad input and failures", .serialized)
struct TapRobustnessTests {
    /// The same bytes sent to memcached directly and through the tap must get the same answer,
    /// and the connection must keep working afterwards (checked by the trailing `mn`).
    static let inputs: [String] = [
        "bogus command\r\n",
        "\r\n",
        "set k 0 0 5\r\nabcdefg\r\n",
        "set " + String(repeating: "k", count: 251) + " 0 0 1\r\nx\r\n",
        "set k 0 0 -1\r\n",
        "set k notanumber 0 1\r\nx\r\n",
        "get " + String(repeating: "k", count: 251) + "\r\n",
        "incr k x\r\n",
        "incr\r\n",
        "delete k 5\r\n",
        "mg " + String(repeating: "k", count: 251) + " v\r\n",
        "ms k S2\r\nab\r\n",
        "set k 0 0 2000000\r\n" + String(repeating: "z", count: 2_000_000) + "\r\n",
        "ms k 2000000 T0\r\n" + String(repeating: "z", count: 2_000_000) + "\r\n",
        String(repeating: "x", count: 9000) + "\r\n",
        "get a b c\r\n",
        "touch k\r\n",
    ]

    @Test(arguments: inputs)
    func sameAnswerAsMemcached(_ input: String) throws {
        let h = try TapHarness()
        let req = Array(input.utf8) + Array("mn\r\n".utf8)
        let direct = try converse(h.memcached.endpoint, req, until: "MN\r\n")
        let tapped = try converse(h.endpoint, req, until: "MN\r\n")
        #expect(tapped == direct, "input \(input.prefix(60).debugDescription)")
        #expect(h.proxy.stats.activeSessions <= 1)
    }

    /// Requests cut where a client's writes may cut them ("|"), and lines ended by a bare LF:
    /// the tap forwards a request from its input buffer when the whole of it is there, and
    /// keeps its line aside otherwise; both ways must answer as memcached does.
    static let splitInputs: [String] = [
        "set k 0 0 5\r\n|abcde\r\nget k\r\n",
        "set k 0 0 5\r\nab|cde\r\nget k\r\n",
        "set k 0 0 5\r\nabcdefg|\r\nget k\r\n",
        "set k 0 0 5\r\nabcdefg\r\n|get k\r\n",
        "set k 0 0 1\nx\r\nget k\nget k\r\n",
        "set k 0 0 3 noreply\r\n|abc\r\nget k\r\n",
        "ms k 2 T0\r\n|hi\r\nmg k v\r\n",
        "get k|\r\n",
    ]

    @Test(arguments: splitInputs)
    func sameAnswerWhenSplitAcrossReads(_ input: String) throws {
        let h = try TapHarness()
        let pieces = (input + "mn\r\n").split(separator: "|").map { Array($0.utf8) }
        let direct = try converse(h.memcached.endpoint, pieces: pieces, until: "MN\r\n")
        let tapped = try converse(h.endpoint, pieces: pieces, until: "MN\r\n")
        #expect(tapped == direct, "input \(input.debugDescription)")
        // Each input but the bad data chunks and the lone get stores k, which what follows reads.
        let stores = !input.contains("abcdefg") && !input.hasPrefix("get")
        #expect((direct.contains("VALUE k") || direct.contains("VA 2")) == stores, "\(direct.debugDescription)")
    }

    @Test func garbageAndTruncationNeverKillTheProxy() throws {
        let h = try TapHarness()
        var g = SystemRandomNumberGenerator()
        for i in 0..<200 {
            let s = try Socket.connect(to: h.endpoint, timeoutMs: 1000)
            var junk = (0..<Int.random(in: 1...2000, using: &g)).map { _ in UInt8.random(in: 0...255, using: &g) }
            if i % 3 == 0 { junk = Array("set k 0 0 100\r\nshort".utf8) }
            if i % 5 == 0 { junk[0] = 0x80 }  // binary magic, then garbage
            try? s.write(junk)
            s.close()
        }
        let c = try MemcacheConnection(h.endpoint)
        #expect(try c.set(Array("alive".utf8), [1]) == .stored)
        #expect(try c.get(Array("alive".utf8))?.value == [1])
    }

    @Test func deadMemcachedGivesServerErrorAndTheTapRecovers() throws {
        let h = try TapHarness()
        let c = try MemcacheConnection(h.endpoint)
        #expect(try c.set(Array("k".utf8), [1]) == .stored)
        h.memcached.kill9()
        let err = #expect(throws: MemcacheError.self) { try c.set(Array("k".utf8), [2]) }
        if case .protocolError(.serverError(let why))? = err {
            #expect(why.contains("memcached"), "reason given: \(why)")
        } else {
            Issue.record("want SERVER_ERROR with a reason, got \(String(describing: err))")
        }
        let c2 = try MemcacheConnection(h.endpoint)
        #expect(throws: MemcacheError.self) { try c2.get(Array("k".utf8)) }
        let back = try MemcachedServer(port: h.memcached.port)
        defer { back.stop() }
        #expect(try c.set(Array("k".utf8), [3]) == .stored)
        #expect(try c2.get(Array("k".utf8))?.value == [3])
    }
}

@Suite("tap journal sender", .serialized)
struct TapEmitterTests {
    @Test func killingTheReceiverMidLoadLosesNothing() throws {
        let dir = Paths.tempDir("emit")
        let port = Ports.free()
        var keeper: Node? = try TapHarness.keeper(dir: dir, port: port, memcached: "127.0.0.1:1")
        let emitter = TapEmitter(.init(journal: Endpoint(host: "127.0.0.1", port: port), capacity: 100_000))
        defer { emitter.stop() }
        var first = Set<String>()
        for i in 0..<30_000 {
            emitter.emit(.write, key: Array("k\(i)".utf8))
            if i == 10_000 {
                first = Self.journaledKeys(keeper)
                keeper?.stop()
                first = first.union(Self.journaledKeys(keeper))
                keeper = nil
            }
            if i == 20_000 { keeper = try TapHarness.keeper(dir: dir, port: port, memcached: "127.0.0.1:1", suffix: "2") }
        }
        #expect(emitter.drain(timeoutMs: 10_000))
        let all = first.union(Self.journaledKeys(keeper))
        #expect(all.count == 30_000, "lost \(30_000 - all.count) records")
        #expect(emitter.counters.gaps == 0)
        keeper?.stop()
    }

    static func journaledKeys(_ n: Node?) -> Set<String> {
        guard let k = n?.state.withLock({ $0.keeper }) else { return [] }
        return k.state.withLock { Set($0.backlog.records.map { String(decoding: $0.key, as: UTF8.self) }) }
    }

    @Test func overflowReportsAGapThatReachesTheJournal() throws {
        let dir = Paths.tempDir("overflow")
        let port = Ports.free()
        let emitter = TapEmitter(.init(journal: Endpoint(host: "127.0.0.1", port: port), capacity: 100))
        defer { emitter.stop() }
        for i in 0..<250 { emitter.emit(.write, key: Array("o\(i)".utf8)) }
        let c = emitter.counters
        #expect(c.gaps == 1)
        #expect(c.overflowed == 202)  // two overflows: 101 records each, both inside one gap
        let keeper = try TapHarness.keeper(dir: dir, port: port, memcached: "127.0.0.1:1")
        defer { keeper.stop() }
        #expect(emitter.drain(timeoutMs: 10_000))
        let recs = keeper.state.withLock { $0.keeper }!.state.withLock { $0.backlog.records }
        #expect(recs.first?.op == .gap, "the gap must come before the records after it")
        #expect(recs.count == 1 + 48)
        #expect(keeper.state.withLock { $0.keeper }!.state.withLock { $0.counters.gaps } == 1)
    }

    /// A keeper acknowledging records it was never sent would make the tap free them
    /// unreplicated: the tap drops that connection instead, and keeps the records to resend.
    @Test func ackBeyondWhatWasSentIsRefusedNotBelieved() throws {
        let listener = try Listener.tcp(Endpoint(host: "127.0.0.1", port: 0))
        defer { listener.close() }
        let seen = Monitor<(records: Int, closedAfterBadAck: Bool)>((0, false))
        Threads.start("fake-keeper") {
            // The first connection only: the tap reconnects after dropping it.
            guard let s = try? listener.accept() else { return }
            let ch = JournalChannel(s)
            defer { ch.close() }
            guard (try? Handshake.accept(ch, secret: [], epoch: 0)) == .tap,
                  case .tapStart? = try? ch.receive(), (try? ch.send(.tapWelcome(runID: 7, ackedSeq: 0))) != nil,
                  case .records(let recs)? = try? ch.receive() else { return }
            seen.update { $0.records = recs.count }
            try? ch.send(.tapAck(seq: 1_000_000))
            // The tap must hang up: a read that ends (within the 5 s bound) is the proof.
            try? s.setIOTimeout(milliseconds: 5000)
            while case .some = try? ch.receive() {}
            seen.update { $0.closedAfterBadAck = true }
        }
        let emitter = TapEmitter(.init(journal: Endpoint(host: "127.0.0.1", port: listener.port)))
        defer { emitter.stop() }
        for i in 0..<3 { emitter.emit(.write, key: Array("k\(i)".utf8)) }
        let done = seen.wait(until: { $0.closedAfterBadAck }, timeoutMs: 10_000) { s, _ in s }
        #expect(done.records > 0, "the tap should have sent its records")
        #expect(done.closedAfterBadAck, "the tap should drop a keeper that acks what it never sent")
        #expect(emitter.ackedSeq == 0)
        #expect(emitter.counters.acked == 0)
        #expect(emitter.lastSeq == 3)
    }

    @Test func syncModeWithoutFollowerDegradesOrRefuses() throws {
        let sync = try TapHarness(mode: .sync, syncTimeoutMs: 500)
        let c = try MemcacheConnection(sync.endpoint)
        #expect(try c.set(Array("s".utf8), [1]) == .stored)
        #expect(sync.emitter.counters.syncDegraded == 1)

        let strict = try TapHarness(mode: .strict, syncTimeoutMs: 500)
        let c2 = try MemcacheConnection(strict.endpoint)
        #expect(throws: MemcacheError.self) { try c2.set(Array("s".utf8), [1]) }
        #expect(strict.emitter.counters.syncFailed == 1)
        // The write still stands on the active, and was journaled (the refusal may reach the
        // client before the record reaches the keeper).
        #expect(try strict.memcached.connect().get(Array("s".utf8))?.value == [1])
        #expect(strict.waitForRecords(1).count == 1)
    }
}

@Suite("WriteTap library")
struct TappedClientTests {
    @Test func everyAcknowledgedMutationIsJournaledAfterTheAck() throws {
        let h = try TapHarness()
        let c = try TappedClient(memcached: h.memcached.endpoint, tap: h.emitter)
        func k(_ s: String) -> [UInt8] { Array(s.utf8) }
        try c.set(k("a"), [1])
        #expect(try c.store(.add, k("a"), [2]) == .notStored)
        try c.store(.replace, k("a"), [3])
        try c.store(.append, k("a"), [4])
        try c.store(.prepend, k("a"), [5])
        let cas = try #require(try c.connection.gets([k("a")])[k("a")]?.cas)
        try c.store(.cas, k("a"), [6], cas: cas)
        try c.set(k("n"), Array("1".utf8))
        _ = try c.incr(k("n"), by: 2)
        _ = try c.decr(k("n"), by: 1)
        _ = try c.incr(k("missing"), by: 1)
        try c.touch(k("n"), exptime: 100)
        _ = try c.gat(100, [k("a"), k("missing")])
        _ = try c.gats(100, [k("n")])
        try c.delete(k("a"))
        _ = try c.meta(.set(k("m"), [1], ["T0"]))
        _ = try c.meta(.arithmetic(k("m2"), ["N0", "J1"]))
        _ = try c.meta(.get(k("m"), ["T60", "v"]))
        _ = try c.meta(.get(k("m"), ["v"]))
        _ = try c.meta(.delete(k("m")))
        try c.flushAll()
        let want = ["write a", "write a", "write a", "write a", "write a", "write n", "write n", "write n", "touch n",
                    "touch a", "touch n", "delete a", "write m", "write m2", "touch m", "delete m", "flush "]
        #expect(h.waitForRecords(want.count).map { "\($0.0) \($0.1)" } == want)
    }
}

/// The library tap, when memcached's answer to a write is lost: the write may have been
/// applied, so its key must be journaled anyway (a lost record leaves the passive with an
/// older value), and the connection reset so nothing queued lands later.
@Suite("library tap, answer lost")
struct TappedClientLostAnswerTests {
    @Test func aWriteWhoseAnswerIsLostIsStillJournaled() throws {
        // A memcached stand-in that takes the request and closes without answering: as if it
        // applied the write and the link died before the reply.
        let listener = try Listener.tcp(Endpoint(host: "127.0.0.1", port: 0))
        defer { listener.close() }
        let served = Monitor(false)
        Threads.start("silent-peer") {
            defer { served.update { $0 = true } }
            guard let s = try? listener.accept() else { return }
            try? s.setIOTimeout(milliseconds: 2000)
            var buf = [UInt8](repeating: 0, count: 4096)
            _ = try? buf.withUnsafeMutableBytes { try s.read(into: $0) }
            s.close()
        }
        // Nobody listens on the journal port: records stay buffered, counted as emitted.
        let tap = TapEmitter(.init(journal: Endpoint(host: "127.0.0.1", port: Ports.free())))
        defer { tap.stop() }
        let client = try TappedClient(memcached: Endpoint(host: "127.0.0.1", port: listener.port), tap: tap, ioTimeoutMs: 2000)
        var failed = false
        do { _ = try client.set(Array("lost-answer".utf8), [1, 2, 3]) } catch { failed = true }
        #expect(failed, "the set should fail: the peer never answered")
        #expect(tap.counters.emitted == 1, "the key of a write that may have been applied was not journaled")
        // A read whose answer is lost changes nothing and journals nothing.
        #expect(throws: (any Error).self) { _ = try client.get(Array("lost-answer".utf8)) }
        #expect(tap.counters.emitted == 1)
        _ = served.wait(until: { $0 }, timeoutMs: 5000) { s, _ in s }
    }
}
