/// A first-in first-out queue kept in fixed-size chunks, for the journal's long queues: the
/// keeper's backlog, the tap's unacknowledged records, the follower's received stream.
///
/// Those were arrays with a head index, and an array that grows past its capacity copies
/// every element into a buffer twice the size, and one that drops its dead front moves
/// every live element. Both ran under the lock the journal's hot path takes: in the keeper,
/// at 1.1 M records, a single append held it for 37 ms (growth copies of 4, 12 and 22 ms
/// before that), stalling every tap and the follower stream behind it. Here an append
/// allocates at most one chunk, and a removal frees only what it removes, a whole chunk at a
/// time: no operation moves live elements. Redis 7 keeps its replication backlog the same
/// way, as a list of fixed-size blocks.
///
/// Removed elements stay alive until the rest of their chunk is removed too: at most
/// `chunkSize - 1` of them.
///
/// `@inlinable` so that each user's element type gets specialized code: unspecialized
/// generic code across modules would go through value witness tables per element.
public struct ChunkedQueue<Element>: RandomAccessCollection {
    @inlinable public static var chunkSize: Int { 4096 }

    @usableFromInline var chunks: [[Element]] = []
    /// Index in `chunks[0]` of the first element.
    @usableFromInline var head = 0
    @usableFromInline var stored = 0
    @inlinable public var count: Int { stored }

    @inlinable public init() {}

    @inlinable public var startIndex: Int { 0 }
    @inlinable public var endIndex: Int { count }
    @inlinable public var isEmpty: Bool { count == 0 }
    @inlinable public var first: Element? { count > 0 ? chunks[0][head] : nil }
    @inlinable public var last: Element? { count > 0 ? chunks[chunks.count - 1].last : nil }

    /// The element `i` places from the front (0 is the oldest).
    @inlinable public subscript(i: Int) -> Element {
        precondition(i >= 0 && i < count, "ChunkedQueue index \(i) out of 0..<\(count)")
        let at = head + i
        return chunks[at / Self.chunkSize][at % Self.chunkSize]
    }

    @inlinable public mutating func append(_ e: Element) {
        if chunks.isEmpty || chunks[chunks.count - 1].count == Self.chunkSize {
            var chunk: [Element] = []
            chunk.reserveCapacity(Self.chunkSize)
            chunks.append(chunk)
        }
        chunks[chunks.count - 1].append(e)
        stored += 1
    }

    @inlinable public mutating func append(contentsOf elements: some Sequence<Element>) {
        for e in elements { append(e) }
    }

    /// Removes the `n` oldest elements (at most `count`).
    @inlinable public mutating func removeFirst(_ n: Int) {
        let n = Swift.min(Swift.max(n, 0), count)
        stored -= n
        head += n
        let whole = head / Self.chunkSize
        if whole > 0 {
            chunks.removeFirst(whole)
            head -= whole * Self.chunkSize
        }
        if count == 0 { removeAll() }
    }

    /// Copies of up to `max` elements from `start` places from the front.
    @inlinable public func elements(from start: Int, max: Int) -> [Element] {
        guard start >= 0, start < count, max > 0 else { return [] }
        let end = start + Swift.min(max, count - start)  // `max` may be Int.max
        var out: [Element] = []
        out.reserveCapacity(end - start)
        var at = head + start
        let stop = head + end
        while at < stop {
            let chunk = at / Self.chunkSize, from = at % Self.chunkSize
            let to = Swift.min(Self.chunkSize, from + (stop - at))
            out.append(contentsOf: chunks[chunk][from..<to])
            at += to - from
        }
        return out
    }

    /// Removes and returns up to `max` of the oldest elements.
    @inlinable public mutating func popFirst(max: Int) -> [Element] {
        let out = elements(from: 0, max: max)
        removeFirst(out.count)
        return out
    }

    @inlinable public mutating func removeAll() {
        chunks.removeAll()
        head = 0
        stored = 0
    }
}

extension ChunkedQueue: Sendable where Element: Sendable {}
