import JournalWire
import Synchronization
import Testing
import UnderstudyPosix

/// Sends from several threads: the thread with the news sends it without blocking, and what a
/// full socket would not take is finished by the writer thread, frames intact and in order.
@Suite("journal channel sending")
struct JournalChannelTests {
    /// A connected pair on loopback: (the sending side, the receiving side).
    static func pair() throws -> (JournalChannel, JournalChannel) {
        let listener = try Listener.tcp(Endpoint(host: "127.0.0.1", port: 0))
        defer { listener.close() }
        let out = try Socket.connect(to: Endpoint(host: "127.0.0.1", port: listener.port), timeoutMs: 1000)
        let inn = try listener.accept()
        try inn.setIOTimeout(milliseconds: 5000)
        return (JournalChannel(out), JournalChannel(inn))
    }

    @Test func sendNowLeavesWhatAFullSocketRefusesForTheWriter() throws {
        let (tx, rx) = try Self.pair()
        defer { tx.close(); rx.close() }
        // Nobody reads yet: big frames fill the socket buffers until sendNow cannot finish.
        let key = [UInt8](repeating: 0x6b, count: 200)
        var sent: UInt64 = 0
        var finished = true
        for _ in 0..<10_000 where finished {
            let batch = (0..<256).map { i in TapRecord(seq: sent + UInt64(i) + 1, op: .write, key: key) }
            finished = tx.sendNow { [.records(batch)] }
            sent += 256
        }
        #expect(!finished, "64 MB of frames never filled the socket buffers")
        #expect(tx.hasLeftover)
        // Another thread holding the lock: sendNow does not wait and builds nothing.
        let gate = Atomic<Int>(0)
        Threads.start("holder") {
            try? tx.send {
                gate.store(1, ordering: .releasing)
                while gate.load(ordering: .acquiring) == 1 { Clock.sleep(microseconds: 100) }
                return []
            }
        }
        while gate.load(ordering: .acquiring) == 0 { Clock.sleep(microseconds: 100) }
        var built = false
        #expect(!tx.sendNow { built = true; return [] })
        #expect(!built)
        gate.store(2, ordering: .releasing)

        // The reader drains while the writer finishes the leftover (a blocking send of nothing).
        let total = sent
        let received = Mutex<[UInt64]>([])
        let reader = Monitor(false)
        Threads.start("reader") {
            while let m = try? rx.receive() {
                if case .records(let recs) = m { received.withLock { $0.append(contentsOf: recs.map(\.seq)) } }
                if received.withLock({ $0.last == total }) { break }
            }
            reader.update { $0 = true }
        }
        try tx.send { [] }
        #expect(!tx.hasLeftover)
        #expect(reader.wait(until: { $0 }, timeoutMs: 30_000) { _, ok in ok })
        let seqs = received.withLock { $0 }
        #expect(seqs.count == Int(sent))
        #expect(seqs == Array(1...sent))
    }

    @Test func closedChannelRefusesSends() throws {
        let (tx, rx) = try Self.pair()
        defer { rx.close() }
        tx.close()
        #expect(throws: StreamError.self) { try tx.send(.tapAck(seq: 1)) }
        var built = false
        #expect(!tx.sendNow { built = true; return [.tapAck(seq: 1)] })
        #expect(!built)
    }
}
