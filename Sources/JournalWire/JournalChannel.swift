import UnderstudyPosix
import Glibc

/// Either side of a journal connection: frames in, frames out, over one socket.
///
/// One thread may receive while another sends: the read buffer and the output buffer are
/// disjoint, which is why this is `@unchecked Sendable`. Two readers or two writers at once
/// are a bug.
public final class JournalChannel: @unchecked Sendable {
    public let stream: ByteStream

    public init(_ socket: Socket) {
        self.stream = ByteStream(socket, capacity: 64 * 1024)
    }

    public var peer: String { stream.peer }

    /// Queues a message; nothing is sent until `flush`.
    public func queue(_ m: Message) { stream.write(m.frame()) }

    public func send(_ m: Message) throws(StreamError) {
        queue(m)
        try stream.flush()
    }

    public func flush() throws(StreamError) { try stream.flush() }

    public enum ReceiveError: Error, CustomStringConvertible {
        case stream(StreamError)
        case journal(JournalError)

        public var description: String {
            switch self {
            case .stream(let e): return e.description
            case .journal(let e): return e.description
            }
        }
    }

    public func receive() throws(ReceiveError) -> Message {
        do {
            let head = try stream.readExact(4)
            let len = head.reduce(0) { $0 << 8 | Int($1) }
            guard len > 0, len <= Message.maxFrame else { throw ReceiveError.journal(.malformed("frame length \(len)")) }
            let body = try stream.readExact(len)
            return try Message.decode(body)
        } catch let e as ReceiveError {
            throw e
        } catch let e as StreamError {
            throw .stream(e)
        } catch {
            throw .journal(error as! JournalError)
        }
    }

    /// True if a whole frame is already buffered (so a reader can drain without blocking).
    public var hasBufferedFrame: Bool { stream.buffered >= 4 }
}
