/// A first-in first-out queue kept in fixed-size chunks, for the journal's long queues: the
/// keeper's backlog, the tap's unacknowledged records, the follower's received stream.
///
/// Those were arrays with a head index, and an array that grows past its capacity copies
/// every element into a buffer twice the size, and one that drops its dead front moves
/// every live element. Both ran under the lock the journal's hot path takes: in the keeper,
/// at 1.1 M records, a single append held it for 37 ms (growth copies of 4, 12 and 22 ms
/// before that), stalling every tap and the follower stream behind it. Here an append
/// allocates at most one chunk and a removal frees at most whole chunks, so no operation
/// touches more than `chunkSize` elements. Like Redis's quicklist, for the same reason.
///
/// Removed elements stay alive until the rest of their chunk is removed too: at most
/// `chunkSize - 1` of them.
public struct ChunkedQueue<Element>: RandomAccessCollection {
    public static var chunkSize: Int { 4096 }

    private var chunks: [[Element]] = []
    /// Index in `chunks[0]` of the first element.
    private var head = 0
    public private(set) var count = 0

    public init() {}

    public var startIndex: Int { 0 }
    public var endIndex: Int { count }
    public var isEmpty: Bool { count == 0 }
    public var first: Element? { count > 0 ? chunks[0][head] : nil }
    public var last: Element? { count > 0 ? chunks[chunks.count - 1].last : nil }

    /// The element `i` places from the front (0 is the oldest).
    public subscript(i: Int) -> Element {
        precondition(i >= 0 && i < count, "ChunkedQueue index \(i) out of 0..<\(count)")
        let at = head + i
        return chunks[at / Self.chunkSize][at % Self.chunkSize]
    }

    public mutating func append(_ e: Element) {
        if chunks.isEmpty || chunks[chunks.count - 1].count == Self.chunkSize {
            var chunk: [Element] = []
            chunk.reserveCapacity(Self.chunkSize)
            chunks.append(chunk)
        }
        chunks[chunks.count - 1].append(e)
        count += 1
    }

    public mutating func append(contentsOf elements: some Sequence<Element>) {
        for e in elements { append(e) }
    }

    /// Removes the `n` oldest elements (at most `count`).
    public mutating func removeFirst(_ n: Int) {
        let n = Swift.min(Swift.max(n, 0), count)
        count -= n
        head += n
        let whole = head / Self.chunkSize
        if whole > 0 {
            chunks.removeFirst(whole)
            head -= whole * Self.chunkSize
        }
        if count == 0 { removeAll() }
    }

    /// Copies of up to `max` elements from `start` places from the front.
    public func elements(from start: Int, max: Int) -> [Element] {
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
    public mutating func popFirst(max: Int) -> [Element] {
        let out = elements(from: 0, max: max)
        removeFirst(out.count)
        return out
    }

    public mutating func removeAll() {
        chunks.removeAll()
        head = 0
        count = 0
    }
}

extension ChunkedQueue: Sendable where Element: Sendable {}
