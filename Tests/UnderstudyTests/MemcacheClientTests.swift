import Foundation
import MemcacheClient
import MemcacheProtocol
import Testing
import UnderstudyPosix

@Suite("memcached client against real memcached", .serialized)
struct MemcacheClientTests {
    let server: MemcachedServer
    let c: MemcacheConnection

    init() throws {
        server = try MemcachedServer()
        c = try server.connect()
    }

    @Test func binaryValueWithFlagsAnd40DayTTLRoundTrips() throws {
        let value = (0..<4096).map { UInt8(truncatingIfNeeded: $0 * 7) } + [0x0D, 0x0A, 0x00]
        let fortyDays: Int64 = 40 * 86400
        let now = Clock.unixSeconds()
        #expect(try c.set(Array("bin".utf8), value, flags: 0xDEAD_BEEF, exptime: now + fortyDays) == .stored)
        let item = try #require(try c.get(Array("bin".utf8)))
        #expect(item.value == value && item.flags == 0xDEAD_BEEF)
        let meta = try c.meta(.get(Array("bin".utf8), ["v", "f", "t"]))
        #expect(meta.value == value)
        let ttl = try #require(meta.intFlag("t"))
        #expect(abs(ttl - fortyDays) <= 2, "TTL read back as \(ttl), want ~\(fortyDays)")
    }

    @Test func classicCommands() throws {
        let k = Array("cls".utf8)
        #expect(try c.store(.add, k, Array("1".utf8)) == .stored)
        #expect(try c.store(.add, k, Array("1".utf8)) == .notStored)
        #expect(try c.store(.replace, k, Array("5".utf8)) == .stored)
        #expect(try c.store(.append, k, Array("0".utf8)) == .stored)
        #expect(try c.store(.prepend, k, Array("1".utf8)) == .stored)
        #expect(try c.get(k)?.value == Array("150".utf8))
        #expect(try c.incr(k, by: 5) == 155)
        #expect(try c.decr(k, by: 200) == 0)
        let cas = try #require(try c.gets([k])[k]?.cas)
        #expect(try c.store(.cas, k, Array("x".utf8), cas: cas) == .stored)
        #expect(try c.store(.cas, k, Array("y".utf8), cas: cas) == .exists)
        #expect(try c.touch(k, exptime: 100))
        #expect(try c.gat(200, [k])[k]?.value == Array("x".utf8))
        #expect(try c.gats(300, [k])[k]?.cas != nil)
        #expect(try c.delete(k))
        #expect(try c.delete(k) == false)
        #expect(try c.incr(k, by: 1) == nil)
        #expect(try c.touch(k, exptime: 1) == false)
        #expect(try c.version().hasPrefix("1."))
        #expect(try c.stats()["pid"] != nil)
        #expect(try c.stats("settings")["item_size_max"] != nil)
        try c.set(Array("f".utf8), [1])
        try c.flushAll()
        #expect(try c.get(Array("f".utf8)) == nil)
    }

    @Test func metaCommandsBase64KeysAndOpaque() throws {
        let bin: [UInt8] = [0x00, 0xff, 0x20, 0x0a]
        #expect(try c.meta(.set(bin, [9, 9], ["F3", "T0"])).status == .hd)
        let got = try c.meta(.get(bin, ["v", "f", "k", "Oxyz"]))
        #expect(got.value == [9, 9] && got.intFlag("f") == 3 && got.key == bin && got.flag("O") == Array("xyz".utf8)[...])
        #expect(try c.meta(.arithmetic(Array("ctr".utf8), ["N0", "J10", "v"])).value == Array("10".utf8))
        #expect(try c.meta(.arithmetic(Array("ctr".utf8), ["D5", "v"])).value == Array("15".utf8))
        #expect(try c.meta(.delete(bin)).status == .hd)
        #expect(try c.meta(.get(bin, ["v"])).status == .en)
        try c.noop()
    }

    @Test func pipelinedAndQuietBatches() throws {
        let keys = (0..<500).map { Array("p\($0)".utf8) }
        let sets = keys.map { MetaRequest.set($0, $0, ["T0"]) }
        #expect(try c.pipeline(sets).allSatisfy { $0.status == .hd })
        let quiet = try c.quietBatch(keys.map { MetaRequest.get($0, ["v"]) } + [MetaRequest.get(Array("absent".utf8), ["v"])])
        // Hits come back; the miss is hidden; nothing else.
        #expect(quiet.count == 500)
        #expect(quiet.map(\.index) == Array(0..<500))
        #expect(quiet.allSatisfy { $0.reply.value == keys[$0.index] })
        let failures = try c.quietBatch([.set(Array("big".utf8), [UInt8](repeating: 1, count: 2 << 20), []), .set(Array("ok".utf8), [1], [])])
        // memcached's error lines carry no opaque, so such a failure cannot name its request.
        #expect(failures.count == 1 && failures[0].index == -1)
        if case .error(.serverError) = failures[0].reply.status {} else { Issue.record("oversize value must be SERVER_ERROR, got \(failures[0].reply.status)") }
        #expect(throws: MemcacheError.self) { try c.meta(.get(Array("q".utf8), ["q"])) }
    }

    @Test func invalidKeysAreRefusedBeforeSending() throws {
        #expect(throws: MemcacheError.protocolError(.invalidKey("251 bytes, limit is 250"))) {
            try c.set([UInt8](repeating: 0x61, count: 251), [1])
        }
        #expect(throws: MemcacheError.self) { try c.get(Array("has space".utf8)) }
        #expect(throws: MemcacheError.self) { try c.delete(Array("ctl\u{7}".utf8)) }
        // The connection is still in step afterwards.
        #expect(try c.set([UInt8](repeating: 0x61, count: 250), [1]) == .stored)
        #expect(try c.get([UInt8](repeating: 0x61, count: 250))?.value == [1])
    }

    @Test func oversizeValueIsAServerErrorAndTheConnectionSurvives() throws {
        let limit = Int(try c.stats("settings")["item_size_max"] ?? "") ?? 0
        #expect(limit > 0)
        #expect(throws: MemcacheError.protocolError(.serverError("object too large for cache"))) {
            try c.set(Array("huge".utf8), [UInt8](repeating: 0, count: limit + 1))
        }
        #expect(try c.set(Array("after".utf8), [1]) == .stored)
    }

    @Test func metadumpOf1000KeysIsComplete() throws {
        try c.flushAll()
        var want = Set<[UInt8]>()
        var batch: [MetaRequest] = []
        for i in 0..<1000 {
            // Mixed keys: plain, with characters metadump percent-encodes, and binary.
            let k: [UInt8] = i % 10 == 0 ? [0xC3, 0xA9, UInt8(i % 256), UInt8(i / 256)] : Array("dump/\(i)%+".utf8)
            want.insert(k)
            batch.append(.set(k, [1], i % 3 == 0 ? ["T3600"] : ["T0"]))
        }
        _ = try c.pipeline(batch)
        var got = Set<[UInt8]>()
        var noExpiry = 0
        let outcome = try server.connect().metadump { e in
            got.insert(e.key)
            if e.expiry == nil { noExpiry += 1 }
        }
        #expect(outcome == .complete(entries: 1000))
        #expect(got == want)
        #expect(noExpiry == 666)
    }
}
