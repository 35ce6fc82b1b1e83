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
        while true {
            let l: [UInt8]
            do {
                // A metadump line ends in "\n" only; the final marker is "END\r\n".
                l = try stream.readMetadumpLine()
            } catch {
                throw .transport(error)
            }
            if l == Array("END".utf8) { return .complete(entries: count) }
            if l.starts(with: Array("BUSY".utf8)) { return .busy }
            if let err = ProtocolError.fromErrorLine(l) { throw .protocolError(err) }
            let entry: MetadumpEntry
            do { entry = try MetadumpEntry.parse(l) } catch { throw .protocolError(error) }
            try each(entry)
            count += 1
        }
    }
}

extension ByteStream {
    /// A line ended by "\n", with a trailing "\r" dropped if present.
    func readMetadumpLine() throws(StreamError) -> [UInt8] {
        var l = try readLineLF()
        if l.last == 0x0D { l.removeLast() }
        return l
    }
}
