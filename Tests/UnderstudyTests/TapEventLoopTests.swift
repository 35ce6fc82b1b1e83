import Foundation
import Glibc
import MemcacheClient
import Testing
import UnderstudyPosix
import WriteTap
@testable import UnderstudyCore

/// What the tap's event loop must keep true: replies in request order however requests are
/// pipelined and answered (forwarded, local, held), one client never stalls another, and a
/// client's exit never costs a record.
@Suite("tap event loop", .serialized)
struct TapEventLoopTests {
    /// With the reply spin off and on: a spin that catches replies must hand the loop the
    /// same events a sleep would.
    @Test(arguments: [0, TapProxy.Options.defaultReplySpinMicros])
    func pipelinedForwardedAndLocalAnswersKeepRequestOrder(spinMicros: Int) throws {
        let h = try TapHarness(replySpinMicros: spinMicros)
        defer { h.stop() }
        let longKey = String(repeating: "k", count: 251)
        // One write: forwarded requests interleaved with ones the tap answers itself, and a
        // quiet batch the tap fences on its own before the next reply-bearing request.
        let req = "flush_all\r\nset a 0 0 1\r\nx\r\nbogus\r\nget a\r\nset \(longKey) 0 0 1\r\ny\r\n"
            + "set q1 0 0 1 noreply\r\n1\r\nset q2 0 0 1 noreply\r\n2\r\nget q1 q2\r\nincr a 1\r\n"
            + "set big 0 0 2000000\r\n" + String(repeating: "z", count: 2_000_000) + "\r\ndelete a\r\nmn\r\n"
        let direct = try converse(h.memcached.endpoint, Array(req.utf8), until: "MN\r\n")
        let tapped = try converse(h.endpoint, Array(req.utf8), until: "MN\r\n")
        #expect(tapped == direct)
        #expect(direct.hasPrefix("OK\r\nSTORED\r\nERROR\r\nVALUE a 0 1\r\n"), "\(direct.prefix(80).debugDescription)")
        let recs = h.waitForRecords(5).map { "\($0.0) \($0.1)" }
        #expect(recs == ["flush ", "write a", "write q1", "write q2", "delete a"])
    }

    /// With one loop and with several: loops ship their records to the keeper themselves, so
    /// several loops sharing one emitter must lose nothing and keep each client's order.
    @Test(arguments: [1, 3])
    func manyClientsAtOnceAreServedAndJournaled(loops: Int) throws {
        let h = try TapHarness(threads: loops)
        defer { h.stop() }
        let clients = 64, writes = 50
        var sockets: [Socket] = []
        defer { for s in sockets { s.close() } }
        for c in 0..<clients {
            let s = try Socket.connect(to: h.endpoint, timeoutMs: 2000)
            try s.setIOTimeout(milliseconds: 10_000)
            var req = ""
            for i in 0..<writes { req += "set c\(c)-\(i) 0 0 \(String(i).count)\r\n\(i)\r\n" }
            req += "get c\(c)-\(writes - 1)\r\n"
            try s.write(Array(req.utf8))
            sockets.append(s)
        }
        let last = String(writes - 1)
        for (c, s) in sockets.enumerated() {
            let want = String(repeating: "STORED\r\n", count: writes) + "VALUE c\(c)-\(last) 0 \(last.count)\r\n\(last)\r\nEND\r\n"
            #expect(try readUntil(s, want.utf8.count) == want, "client \(c)")
        }
        let recs = h.waitForRecords(clients * writes)
        #expect(recs.count == clients * writes)
        var next = [Int](repeating: 0, count: clients)
        for (_, key) in recs {
            let parts = key.dropFirst().split(separator: "-").compactMap { Int($0) }
            guard parts.count == 2 else { Issue.record("unexpected key \(key)"); continue }
            #expect(parts[1] == next[parts[0]], "client \(parts[0]) journaled out of order")
            next[parts[0]] = parts[1] + 1
        }
    }

    @Test func clientThatQuitsRightAfterQuietWritesIsStillJournaled() throws {
        let h = try TapHarness()
        defer { h.stop() }
        var text = ""
        for i in 0..<300 { text += "set gone\(i) 0 0 1 noreply\r\nv\r\n" }
        for i in 0..<300 { text += "ms mgone\(i) 1 q\r\nv\r\n" }
        let s = try Socket.connect(to: h.endpoint, timeoutMs: 2000)
        try s.write(Array(text.utf8))
        s.close()
        let recs = h.waitForRecords(600)
        #expect(recs.count == 600)
        #expect(Set(recs.map(\.1)).count == 600)
    }

    @Test func aClientThatDoesNotReadStallsNobodyElse() throws {
        let h = try TapHarness()
        defer { h.stop() }
        let c = try MemcacheConnection(h.endpoint, ioTimeoutMs: 10_000)
        let big = [UInt8](repeating: 0x42, count: 512 * 1024)
        #expect(try c.set(Array("big".utf8), big) == .stored)
        // 64 × 512 KiB of replies the client does not read: the tap stops reading its requests
        // once its output backs up, and keeps serving others on the shared upstream.
        let slow = try Socket.connect(to: h.endpoint, timeoutMs: 2000)
        defer { slow.close() }
        try slow.setIOTimeout(milliseconds: 10_000)
        try slow.write(Array(String(repeating: "get big\r\n", count: 64).utf8))
        usleep(300_000)
        let other = try MemcacheConnection(h.endpoint, ioTimeoutMs: 2000)
        for i in 0..<20 {
            #expect(try other.set(Array("other\(i)".utf8), [UInt8(i)]) == .stored)
            #expect(try other.get(Array("other\(i)".utf8))?.value == [UInt8(i)])
        }
        // The slow client still gets every reply, whole and in order.
        let one = "VALUE big 0 \(big.count)\r\n".utf8.count + big.count + "\r\nEND\r\n".utf8.count
        let got = try readBytes(slow, one * 64)
        #expect(got.count == one * 64)
        #expect(Array(got[0..<13]) == Array("VALUE big 0 5".utf8))
        #expect(Array(got[(got.count - 5)...]) == Array("END\r\n".utf8))
    }

    @Test func heldSyncReplyKeepsOrderAndDoesNotBlockOtherClients() throws {
        let h = try PairHarness(tapMode: "sync")
        defer { h.stop() }
        try h.waitCaughtUp()
        // Pipelined: the get's answer must not overtake the held STORED.
        let out = try converse(h.tapEndpoint, Array("set s1 0 0 1\r\na\r\nget s1\r\nmn\r\n".utf8), until: "MN\r\n")
        #expect(out == "STORED\r\nVALUE s1 0 1\r\na\r\nEND\r\nMN\r\n")
        #expect(try h.passive.connect().get(Array("s1".utf8))?.value == Array("a".utf8), "sync: acknowledged means on the passive")
        // With the follower stopped, a sync write waits; another client is served meanwhile.
        try h.follower!.pause()
        defer { h.follower!.resume() }
        let waiting = try Socket.connect(to: h.tapEndpoint, timeoutMs: 2000)
        defer { waiting.close() }
        try waiting.setIOTimeout(milliseconds: 10_000)
        try waiting.write(Array("set s2 0 0 1\r\nb\r\n".utf8))
        usleep(100_000)
        let other = try MemcacheConnection(h.tapEndpoint, ioTimeoutMs: 1000)
        let start = Clock.monoNanos()
        #expect(try other.get(Array("s1".utf8))?.value == Array("a".utf8))
        #expect(Clock.monoNanos() - start < 900_000_000, "a read must not wait behind another client's sync write")
        let early = try waiting.waitReadable(timeoutMs: 0) ? try readUntil(waiting, 1) : ""
        #expect(early.isEmpty, "the sync write must still be waiting, got \(early.debugDescription)")
        h.follower!.resume()
        if early.isEmpty { #expect(try readUntil(waiting, 8) == "STORED\r\n") }
    }

    func readBytes(_ s: Socket, _ count: Int) throws -> [UInt8] {
        try readFrom(s) { $0.count >= count }
    }

    func readUntil(_ s: Socket, _ count: Int) throws -> String {
        String(decoding: try readBytes(s, count), as: UTF8.self)
    }
}
