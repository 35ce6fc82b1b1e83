import MemcacheClient
import MemcacheProtocol
import Testing
@testable import UnderstudyCore

/// The LRU pass's trim deletes from the passive what the active no longer has, but only a
/// copy it looked at: one the applier wrote again since the dump must survive.
@Suite("LRU trim CAS guard", .serialized)
struct LRUTrimTests {
    @Test func aKeyCopiedAgainSinceTheDumpSurvivesTheTrim() throws {
        let m = try MemcachedServer()
        defer { m.stop() }
        let c = try m.connect()
        defer { c.close() }
        let keys: [[UInt8]] = (0..<4).map { Array("trim\($0)".utf8) }
        for k in keys { _ = try c.set(k, Array("old".utf8)) }
        // The CAS each key had when the dump saw it.
        let dumped = try c.pipeline(keys.map { MetaRequest.get($0, ["c"]) }).map { try #require($0.intFlag("c")) }
        // The applier copies trim1 and trim3 again: the application wrote them anew.
        for k in [keys[1], keys[3]] { _ = try c.set(k, Array("new".utf8)) }

        let deleted = try LRUWarmer.deleteUnchanged(zip(keys, dumped).map { (key: $0, cas: UInt64($1)) }, on: c)

        #expect(deleted == 2)
        let left = try c.pipeline(keys.map { MetaRequest.get($0, ["v"]) }).map { $0.value.map { String(decoding: $0, as: UTF8.self) } }
        #expect(left == [nil, "new", nil, "new"])
    }
}
