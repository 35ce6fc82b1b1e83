/// What a journal record says happened to a key. Values never travel (Invariant 2).
public enum RecordOp: UInt8, Sendable, CaseIterable, CustomStringConvertible {
    /// set/add/replace/append/prepend/cas/incr/decr/ms/ma: the value changed.
    case write = 1
    case delete = 2
    /// touch/gat/gats/mg T: only the TTL changed.
    case touch = 3
    /// flush_all; the key holds the delay in seconds as ASCII, or is empty.
    case flush = 4
    /// Records were lost between a tap and the keeper: the follower must full sync.
    case gap = 5

    /// A change to one key, which the follower copies; a flush or a gap acts on the whole
    /// copy and must be applied in its place in the order.
    public var isKeyChange: Bool { self == .write || self == .delete || self == .touch }

    public var description: String {
        switch self {
        case .write: return "write"
        case .delete: return "delete"
        case .touch: return "touch"
        case .flush: return "flush"
        case .gap: return "gap"
        }
    }
}

/// A record as a tap sends it: numbered by the tap's own sequence.
public struct TapRecord: Equatable, Sendable {
    public var seq: UInt64
    public var op: RecordOp
    public var key: [UInt8]

    public init(seq: UInt64, op: RecordOp, key: [UInt8]) {
        self.seq = seq
        self.op = op
        self.key = key
    }
}

/// A record as the keeper streams it: numbered by the journal's offset within a run, and
/// stamped with the keeper's receive time so the follower can report lag in milliseconds.
public struct StreamRecord: Equatable, Sendable {
    public var offset: UInt64
    public var stampNanos: Int64
    public var op: RecordOp
    public var key: [UInt8]

    public init(offset: UInt64, stampNanos: Int64, op: RecordOp, key: [UInt8]) {
        self.offset = offset
        self.stampNanos = stampNanos
        self.op = op
        self.key = key
    }
}
