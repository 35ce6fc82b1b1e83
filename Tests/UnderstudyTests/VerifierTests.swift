import MemcacheClient
import MemcacheProtocol
import Testing
@testable import UnderstudyCore
import UnderstudyPosix

/// `understudy verify` is what the drills, the labs and an operator trust to say two copies
/// match, so it must find each kind of difference, and must not call memcached's own clock
/// rounding one.
@Suite("verify: finds every kind of difference between two memcacheds")
struct VerifierTests {
    @Test func findsEachDifferenceAndToleratesOnlyClockRounding() throws {
        let active = try MemcachedServer()
        defer { active.stop() }
        let passive = try MemcachedServer()
        defer { passive.stop() }
        let a = try active.connect()
        let p = try passive.connect()
        let absolute = Clock.unixSeconds() + 40 * 86400
        func put(_ c: MemcacheConnection, _ key: String, _ value: String, _ flags: [String]) throws {
            #expect(try c.meta(.set(Array(key.utf8), Array(value.utf8), flags)).status == .hd)
        }
        // key: (on the active, on the passive); nil means absent.
        let cases: [(String, (String, [String])?, (String, [String])?)] = [
            ("same", ("v", ["F1", "T3600"]), ("v", ["F1", "T3600"])),
            ("same-forever", ("v", ["T0"]), ("v", ["T0"])),
            ("ttl-rounded", ("v", ["T3600"]), ("v", ["T3602"])),
            ("absolute-rounded", ("v", ["T\(absolute)"]), ("v", ["T\(absolute + 3)"])),
            ("missing", ("v", []), nil),
            ("extra", nil, ("v", [])),
            ("value", ("v1", []), ("v2", [])),
            ("flags", ("v", ["F1"]), ("v", ["F2"])),
            ("ttl", ("v", ["T3600"]), ("v", ["T3610"])),
            ("ttl-none", ("v", ["T3600"]), ("v", ["T0"])),
            ("absolute", ("v", ["T\(absolute)"]), ("v", ["T\(absolute + 10)"])),
            ("stale", ("v", ["T3600"]), ("v", ["T3600"])),
            ("stale-both", ("v", ["T3600"]), ("v", ["T3600"])),
        ]
        for (key, onActive, onPassive) in cases {
            if let (v, f) = onActive { try put(a, key, v, f) }
            if let (v, f) = onPassive { try put(p, key, v, f) }
        }
        for (c, key) in [(a, "stale"), (a, "stale-both"), (p, "stale-both")] {
            #expect(try c.meta(.markStale(Array(key.utf8))).status == .hd)
        }
        let report = try Verifier(active: active.endpoint, passive: passive.endpoint).run(showing: 100)
        let found = Set(report.first.map { String(decoding: $0.key, as: UTF8.self) })
        #expect(found == ["missing", "extra", "value", "flags", "ttl", "ttl-none", "absolute", "stale"], "\(report.first)")
        #expect(report.compared == 12, "every key on the active but the extra one")
        #expect((report.missing, report.extra, report.valueDiffs, report.flagDiffs, report.ttlDiffs, report.staleDiffs) == (1, 1, 1, 1, 3, 1))
        // Verify read the stale items on both sides; the application's next read must still
        // win the right to recache them.
        for (c, key) in [(a, "stale"), (a, "stale-both"), (p, "stale-both")] {
            let r = try c.meta(.get(Array(key.utf8), ["v"]))
            #expect(r.isStale && r.wonToken, "\(key): \(r.flags.map { String(decoding: $0, as: UTF8.self) })")
        }
    }
}
