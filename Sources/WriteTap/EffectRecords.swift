import JournalWire
import MemcacheProtocol

/// The one mapping from "what a request did" to journal records, shared by the proxy's text
/// and binary sessions and the library client.
extension ClientCommand.Effect {
    /// Records for a request that succeeded; `hits` are the keys a gat/gats returned.
    func records(hits: [[UInt8]]) -> [(RecordOp, [UInt8])] {
        if case .touchHits = self { return hits.map { (.touch, $0) } }
        return record.map { [$0] } ?? []
    }

    /// The one record a successful request on one key makes (every effect but gat/gats),
    /// without an array around it: this is every proxied write's path.
    var record: (RecordOp, [UInt8])? {
        switch self {
        case .write(let k): return (.write, k)
        case .delete(let k): return (.delete, k)
        case .touch(let k): return (.touch, k)
        case .flush(let d): return (.flush, d)
        case .touchHits: return nil
        case .metaGet(let k, let touches, let vivifies):
            if vivifies { return (.write, k) }
            return touches ? (.touch, k) : nil
        }
    }
}

extension BinaryPacket.Effect {
    var recordOp: RecordOp {
        switch self {
        case .write: return .write
        case .delete: return .delete
        case .touch: return .touch
        case .flush: return .flush
        }
    }

    /// The record for a successful request on `key` (a flush names no key).
    func record(_ key: [UInt8]) -> (RecordOp, [UInt8]) { (recordOp, self == .flush ? [] : key) }
}
