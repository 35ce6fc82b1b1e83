import MemcacheClient
import MemcacheProtocol
import Testing
@testable import UnderstudyCore
import UnderstudyPosix

/// memcached runs one metadump at a time: a feed whose reader has stopped must end its dump,
/// or the next full sync or LRU pass waits (`BUSY`) for a dump nobody reads.
@Suite("metadump feed: filters and stops")
struct MetadumpFeedTests {
    @Test func aStoppedFeedEndsItsDumpAndAFilteredOneHandsOutOnlyWhatWasRead() throws {
        let server = try MemcachedServer()
        defer { server.stop() }
        let total = 300_000
        try server.prefill(total)
        let c = try server.connect()
        defer { c.close() }
        let read = (0..<5).map { Array("pre\($0 * 1000)".utf8) }
        _ = try c.pipeline(read.map { MetaRequest.get($0, ["v"]) })

        let filtered = MetadumpFeed(server.endpoint, batchSize: 100, onlyFetched: true)
        var got: [[UInt8]] = []
        while let keys = try filtered.next() { got += keys }
        #expect(Set(got) == Set(read))

        let feed = MetadumpFeed(server.endpoint, batchSize: 1000)
        #expect(try feed.next()?.count == 1000)
        feed.stop()
        let (done, entries) = feed.state.wait(until: { $0.done }, timeoutMs: 60_000) { s, ok in (ok, s.entries) }
        #expect(done)
        #expect(entries < total / 2, "the stopped feed read \(entries) of \(total) entries")
    }
}
