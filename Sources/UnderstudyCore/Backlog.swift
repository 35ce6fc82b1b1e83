import JournalWire

/// The keeper's bounded in-memory journal: the last records of this run, by offset.
///
/// Like Redis's replication backlog, it is what lets a follower that dropped off resume with
/// a partial sync. It is bounded in bytes; the oldest records fall off first, and a follower
/// that asks for one of those gets a full sync instead (Invariant 3).
struct Backlog {
    /// Estimated bytes per record besides its key: the struct, the key's array header and
    /// allocator rounding. Used for the bound and reported in status.
    static let overheadPerRecord = 80

    private(set) var records: [StreamRecord] = []
    private var head = 0
    /// Offset of the next record to append; offsets start at 1 in every run.
    private(set) var nextOffset: UInt64 = 1
    private(set) var bytes = 0
    let limitBytes: Int

    init(limitBytes: Int) { self.limitBytes = limitBytes }

    var count: Int { records.count - head }
    /// The oldest offset still held (== nextOffset when empty).
    var firstOffset: UInt64 { head < records.count ? records[head].offset : nextOffset }
    var lastOffset: UInt64 { nextOffset - 1 }

    @discardableResult
    mutating func append(_ op: RecordOp, key: [UInt8], stamp: Int64) -> UInt64 {
        let off = nextOffset
        nextOffset += 1
        records.append(StreamRecord(offset: off, stampNanos: stamp, op: op, key: key))
        bytes += key.count + Self.overheadPerRecord
        while bytes > limitBytes && head < records.count - 1 {
            bytes -= records[head].key.count + Self.overheadPerRecord
            head += 1
        }
        if head > 65536 && head * 2 > records.count {
            records.removeFirst(head)
            head = 0
        }
        return off
    }

    /// Whether a follower can continue from `offset` (the next one it needs).
    func covers(_ offset: UInt64) -> Bool { offset >= firstOffset && offset <= nextOffset }

    /// Up to `max` records starting at `offset`; nil if they have already fallen off.
    func read(from offset: UInt64, max: Int) -> [StreamRecord]? {
        guard covers(offset) else { return nil }
        let start = head + Int(offset - firstOffset)
        let end = start + Swift.min(records.count - start, max)
        return start < end ? Array(records[start..<end]) : []
    }
}
