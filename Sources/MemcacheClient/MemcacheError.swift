import MemcacheProtocol
import UnderstudyPosix

/// Everything a memcached call can fail with, split the way a caller reacts to it:
/// transport errors mean "reconnect and maybe fail over", protocol errors mean "this request".
public enum MemcacheError: Error, CustomStringConvertible, Sendable, Equatable {
    case connect(SystemError)
    case transport(StreamError)
    case protocolError(ProtocolError)

    public var description: String {
        switch self {
        case .connect(let e): return "cannot connect: \(e)"
        case .transport(let e): return e.description
        case .protocolError(let e): return e.description
        }
    }

    /// True when the connection can no longer be trusted to be in step with the server.
    public var breaksConnection: Bool {
        if case .protocolError(let p) = self, case .malformed = p { return true }
        if case .protocolError = self { return false }
        return true
    }
}

/// A cached item as a classic `get`/`gets` returns it.
public struct Item: Equatable, Sendable {
    public var value: [UInt8]
    public var flags: UInt32
    public var cas: UInt64?

    public init(value: [UInt8], flags: UInt32, cas: UInt64? = nil) {
        self.value = value
        self.flags = flags
        self.cas = cas
    }
}

/// The outcome of a storage command.
public enum StoreResult: Equatable, Sendable {
    case stored, notStored, exists, notFound
}
