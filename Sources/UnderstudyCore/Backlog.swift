import JournalWire
import UnderstudyPosix

/// The keeper's bounded in-memory journal: the last records of this run, by offset.
///
/// Like Redis's replication backlog, it is what lets a follower that dropped off resume with
/// a partial sync. It is bounded in bytes; the oldest records fall off first, and a follower
/// that asks for one of those gets a full sync instead (Invariant 3).
struct Backlog {
    /// Estimated bytes per record besides its key: the struct, the key's array header and
    /// allocator rounding. Used for the bound and reported in status.
    static let overheadPerRecord = 80

    /// Chunked, so neither growth nor the oldest records falling off ever moves the rest
    /// under the keeper's lock (see `ChunkedQueue`).
    private(set) var records = ChunkedQueue<StreamRecord>()
    /// Offset of the next record to append. A run starts at 1, or where the run it continues
    /// ended (see `Keeper.Lineage`).
    private(set) var nextOffset: UInt64
    private(set) var bytes = 0
    let limitBytes: Int

    init(limitBytes: Int, firstOffset: UInt64 = 1) {
        self.limitBytes = limitBytes
        nextOffset = firstOffset
    }

    var count: Int { records.count }
    /// The oldest offset still held (== nextOffset when empty).
    var firstOffset: UInt64 { records.first?.offset ?? nextOffset }
    var lastOffset: UInt64 { nextOffset - 1 }

    @discardableResult
    mutating func append(_ op: RecordOp, key: [UInt8], stamp: Int64) -> UInt64 {
        let off = nextOffset
        nextOffset += 1
        records.append(StreamRecord(offset: off, stampNanos: stamp, op: op, key: key))
        bytes += key.count + Self.overheadPerRecord
        while bytes > limitBytes && records.count > 1, let oldest = records.first {
            bytes -= oldest.key.count + Self.overheadPerRecord
            records.removeFirst(1)
        }
        return off
    }

    /// Whether a follower can continue from `offset` (the next one it needs).
    func covers(_ offset: UInt64) -> Bool { offset >= firstOffset && offset <= nextOffset }

    /// Appends a stream frame of up to `max` records from `offset` to `out`, encoded in
    /// place. Returns the offset after the last record (`offset` itself when there was none
    /// yet), or nil if they have already fallen off.
    func appendStreamFrame(from offset: UInt64, max: Int, to out: inout [UInt8]) -> UInt64? {
        guard let span = span(from: offset, max: max) else { return nil }
        if !span.isEmpty { Message.appendStreamFrame(records, range: span, to: &out) }
        return offset + UInt64(span.count)
    }

    /// Up to `max` records starting at `offset`; nil if they have already fallen off.
    func read(from offset: UInt64, max: Int) -> [StreamRecord]? {
        span(from: offset, max: max).map { records.elements(from: $0.lowerBound, max: $0.count) }
    }

    /// Where in `records` the up to `max` records from `offset` are; nil if they have
    /// already fallen off. One place for the offset arithmetic both readers share.
    private func span(from offset: UInt64, max: Int) -> Range<Int>? {
        guard covers(offset) else { return nil }
        let from = Int(offset - firstOffset)
        return from..<(from + Swift.min(max, records.count - from))
    }
}
