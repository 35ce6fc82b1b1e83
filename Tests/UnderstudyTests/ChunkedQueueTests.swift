import Testing
import UnderstudyPosix

/// The chunked queue behind the backlog, the tap's unacknowledged records and the follower's
/// stream buffer, checked against a plain array doing the same operations.
@Suite("chunked queue (no sockets)")
struct ChunkedQueueTests {
    static let chunk = ChunkedQueue<Int>.chunkSize

    @Test func matchesAnArrayAcrossChunkBoundaries() {
        var q = ChunkedQueue<Int>()
        var model: [Int] = []
        var next = 0
        // A fixed-seed walk of appends, pops and removals, sized to cross many chunk edges
        // and to empty the queue now and then.
        var rng = SeededRandom(42)
        for step in 0..<4000 {
            switch rng.next() % 10 {
            case 0...4:
                let n = Int(rng.next() % UInt64(Self.chunk / 2))
                q.append(contentsOf: next..<(next + n))
                model.append(contentsOf: next..<(next + n))
                next += n
            case 5, 6:
                let n = Int(rng.next() % UInt64(Self.chunk))
                let popped = q.popFirst(max: n)
                #expect(popped == Array(model.prefix(n)), "step \(step)")
                model.removeFirst(min(n, model.count))
            case 7, 8:
                let n = Int(rng.next() % UInt64(Self.chunk * 2))
                q.removeFirst(n)
                model.removeFirst(min(n, model.count))
            default:
                if !model.isEmpty {
                    let from = Int(rng.next() % UInt64(model.count))
                    let max = Int(rng.next() % UInt64(Self.chunk * 3))
                    #expect(q.elements(from: from, max: max) == Array(model[from..<min(model.count, from + max)]), "step \(step)")
                    #expect(q[from] == model[from])
                }
            }
            #expect(q.count == model.count, "step \(step)")
            #expect(q.first == model.first && q.last == model.last, "step \(step)")
        }
        #expect(next > 10 * Self.chunk, "the walk should have crossed many chunks")
    }

    @Test func edgesAreEmptyNotCrashes() {
        var q = ChunkedQueue<Int>()
        #expect(q.isEmpty && q.first == nil && q.last == nil)
        #expect(q.popFirst(max: 10) == [])
        q.removeFirst(5)
        #expect(q.count == 0)
        q.append(contentsOf: 0..<(Self.chunk + 1))
        #expect(q.elements(from: Self.chunk + 1, max: 10) == [])
        #expect(q.elements(from: -1, max: 10) == [])
        #expect(q.elements(from: 0, max: 0) == [])
        #expect(q.elements(from: 1, max: .max).count == Self.chunk)
        #expect(q.elements(from: Self.chunk - 1, max: 5) == [Self.chunk - 1, Self.chunk])
        q.removeFirst(Self.chunk * 10)
        #expect(q.isEmpty)
        q.append(7)
        #expect(q.first == 7 && q.last == 7 && q.count == 1)
    }
}
