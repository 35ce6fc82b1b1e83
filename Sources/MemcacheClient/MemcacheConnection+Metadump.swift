import MemcacheProtocol
import UnderstudyPosix

/// `lru_crawler metadump hash`, streamed.
extension MemcacheConnection {
    public enum DumpOutcome: Equatable, Sendable {
        case complete(entries: Int)
        /// Another crawler was running; try again later.
        case busy
    }

    /// Walks every item by hash table order, calling `each` per key without holding the whole
    /// dump in memory. `hash`, not `all`: under writes `all` missed 2–28 % of keys (DESIGN §6).
    public func metadump(_ each: (MetadumpEntry) throws(MemcacheError) -> Void) throws(MemcacheError) -> DumpOutcome {
        try send(Array("lru_crawler metadump hash\r\n".utf8))
        var count = 0
        let end = Array("END".utf8), busy = Array("BUSY".utf8)
        while true {
            // A metadump line ends in "\n" only; the final marker is "END\r\n".
            var line: UnsafeRawBufferPointer
            do { line = try stream.readLineView(limit: 8192, lfOnly: true) } catch { throw .transport(error) }
            if line.last == 0x0D { line = UnsafeRawBufferPointer(rebasing: line.dropLast()) }
            if line.elementsEqual(end) { return .complete(entries: count) }
            if line.starts(with: busy) { return .busy }
            if line.first == UInt8(ascii: "E") || line.first == UInt8(ascii: "C") || line.first == UInt8(ascii: "S"),
               let err = ProtocolError.fromErrorLine(Array(line)) {
                throw .protocolError(err)
            }
            let entry: MetadumpEntry
            do { entry = try MetadumpEntry.parse(line) } catch { throw .protocolError(error) }
            try each(entry)
            count += 1
        }
    }
}
