import JournalWire
import MemcacheClient
import MemcacheProtocol
import UnderstudyPosix

/// The write tap as a library: a memcached client that journals every write memcached
/// acknowledged (Invariant 1), through a shared `TapEmitter`.
///
/// Like `MemcacheConnection` it is one ordered connection and not thread-safe; give each
/// thread its own `TappedClient` over one shared emitter.
public final class TappedClient {
    public let connection: MemcacheConnection
    public let tap: TapEmitter

    public enum TapError: Error, CustomStringConvertible {
        case memcached(MemcacheError)
        /// Strict mode: memcached stored the write but the follower did not apply it in time.
        case notReplicated(String)

        public var description: String {
            switch self {
            case .memcached(let e): return e.description
            case .notReplicated(let why): return "not replicated: \(why)"
            }
        }
    }

    public init(memcached: Endpoint, tap: TapEmitter, ioTimeoutMs: Int = 5000) throws(MemcacheError) {
        self.connection = try MemcacheConnection(memcached, ioTimeoutMs: ioTimeoutMs)
        self.tap = tap
    }

    /// Journals one acknowledged write and applies the sync policy.
    func journal(_ op: RecordOp, _ key: [UInt8]) throws(TapError) {
        if let why = tap.syncRefusal(tap.emit(op, key: key)) { throw .notReplicated(why) }
    }

    /// Runs one request. If the connection breaks under it, memcached may have applied the
    /// write with its answer lost, so, as the proxy does (`upstreamLost`), the connection is
    /// reset (nothing still queued may land later) and `mayHaveApplied` is journaled: a record
    /// too many is harmless, one too few leaves the passive with an older value.
    func call<R>(mayHaveApplied: [(RecordOp, [UInt8])] = [], _ body: () throws(MemcacheError) -> R) throws(TapError) -> R {
        do { return try body() } catch {
            if case .connect = error { throw .memcached(error) }  // nothing was sent
            if error.breaksConnection, !mayHaveApplied.isEmpty {
                connection.abort()
                for (op, key) in mayHaveApplied { _ = tap.emit(op, key: key) }
            }
            throw .memcached(error)
        }
    }

    @discardableResult
    public func store(_ cmd: TextRequest.Storage, _ key: [UInt8], _ value: [UInt8], flags: UInt32 = 0,
                      exptime: Int64 = 0, cas: UInt64? = nil) throws(TapError) -> StoreResult {
        let r = try call(mayHaveApplied: [(.write, key)]) { () throws(MemcacheError) in try connection.store(cmd, key, value, flags: flags, exptime: exptime, cas: cas) }
        if r == .stored { try journal(.write, key) }
        return r
    }

    @discardableResult
    public func set(_ key: [UInt8], _ value: [UInt8], flags: UInt32 = 0, exptime: Int64 = 0) throws(TapError) -> StoreResult {
        try store(.set, key, value, flags: flags, exptime: exptime)
    }

    public func get(_ key: [UInt8]) throws(TapError) -> Item? {
        try call { () throws(MemcacheError) in try connection.get(key) }
    }

    @discardableResult
    public func delete(_ key: [UInt8]) throws(TapError) -> Bool {
        let r = try call(mayHaveApplied: [(.delete, key)]) { () throws(MemcacheError) in try connection.delete(key) }
        if r { try journal(.delete, key) }
        return r
    }

    public func incr(_ key: [UInt8], by delta: UInt64) throws(TapError) -> UInt64? {
        let r = try call(mayHaveApplied: [(.write, key)]) { () throws(MemcacheError) in try connection.incr(key, by: delta) }
        if r != nil { try journal(.write, key) }
        return r
    }

    public func decr(_ key: [UInt8], by delta: UInt64) throws(TapError) -> UInt64? {
        let r = try call(mayHaveApplied: [(.write, key)]) { () throws(MemcacheError) in try connection.decr(key, by: delta) }
        if r != nil { try journal(.write, key) }
        return r
    }

    @discardableResult
    public func touch(_ key: [UInt8], exptime: Int64) throws(TapError) -> Bool {
        let r = try call(mayHaveApplied: [(.touch, key)]) { () throws(MemcacheError) in try connection.touch(key, exptime: exptime) }
        if r { try journal(.touch, key) }
        return r
    }

    public func gat(_ exptime: Int64, _ keys: [[UInt8]]) throws(TapError) -> [[UInt8]: Item] {
        let r = try call(mayHaveApplied: keys.map { (.touch, $0) }) { () throws(MemcacheError) in try connection.gat(exptime, keys) }
        for k in keys where r[k] != nil { try journal(.touch, k) }
        return r
    }

    public func gats(_ exptime: Int64, _ keys: [[UInt8]]) throws(TapError) -> [[UInt8]: Item] {
        let r = try call(mayHaveApplied: keys.map { (.touch, $0) }) { () throws(MemcacheError) in try connection.gats(exptime, keys) }
        for k in keys where r[k] != nil { try journal(.touch, k) }
        return r
    }

    public func flushAll(delay: Int64? = nil) throws(TapError) {
        let record = delay.map { Array(String($0).utf8) } ?? []
        try call(mayHaveApplied: [(.flush, record)]) { () throws(MemcacheError) in try connection.flushAll(delay: delay) }
        try journal(.flush, record)
    }

    /// `ms`, `md`, `ma`, and `mg` (journaled when it carries `T`, a touch, or `N`, a create).
    public func meta(_ request: MetaRequest) throws(TapError) -> MetaReply {
        let changes = Self.mayApply(request)
        let reply = try call(mayHaveApplied: changes) { () throws(MemcacheError) in try connection.meta(request) }
        let ok = reply.status == .hd || reply.status == .va
        // `N` creates the item whether or not the get found it; the rest changed only if it succeeded.
        if ok || Self.vivifies(request) { for (op, key) in changes { try journal(op, key) } }
        return reply
    }

    /// An `mg` with `N`: it creates the item on a miss.
    static func vivifies(_ request: MetaRequest) -> Bool {
        request.command == .get && request.flags.contains { $0.hasPrefix("N") }
    }

    /// What a meta request may change: journaled once it succeeded (`N`: always), and when
    /// its answer is lost. One classification for both, so they cannot drift apart.
    static func mayApply(_ request: MetaRequest) -> [(RecordOp, [UInt8])] {
        switch request.command {
        case .set, .arithmetic: return [(.write, request.key)]
        case .delete: return [(.delete, request.key)]
        case .get:
            if vivifies(request) { return [(.write, request.key)] }
            if request.flags.contains(where: { $0.hasPrefix("T") }) { return [(.touch, request.key)] }
            return []
        case .noop: return []
        }
    }
}
