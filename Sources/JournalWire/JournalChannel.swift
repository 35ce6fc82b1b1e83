import Glibc
import Synchronization
import UnderstudyPosix

/// Either side of a journal connection: frames in, frames out, over one socket.
///
/// One thread receives. Any thread may send: sends are serialized by a lock, so the thread
/// that has the news (a record journaled, a write applied) can send it itself instead of
/// waking a writer thread, a context switch on the latency path of every sync write. The
/// writer thread stays for what nobody else sends (keepalives, backlog, leftovers). The read
/// buffer and the output buffer are disjoint, which is why this is `@unchecked Sendable`.
public final class JournalChannel: @unchecked Sendable {
    public let stream: ByteStream
    /// Held while sending; true once the channel is closed, so a thread that kept a
    /// reference cannot write to a descriptor number the kernel may have reused.
    private let sending = Mutex<Bool>(false)
    private let leftover = Atomic<Bool>(false)

    public init(_ socket: Socket) {
        self.stream = ByteStream(socket, capacity: 64 * 1024)
    }

    public var peer: String { stream.peer }

    public func send(_ m: Message) throws(StreamError) {
        try send { [m] }
    }

    /// Sends what `build` returns, blocking until it is written. `build` runs under the send
    /// lock, so messages it takes from shared state go out in the order they were taken.
    public func send(_ build: () -> [Message]) throws(StreamError) {
        try send(encoding: { out in for m in build() { m.frame(into: &out) } })
    }

    /// `send` for a builder that appends its frames to the output buffer itself.
    public func send(encoding build: (inout [UInt8]) -> Void) throws(StreamError) {
        try sending.withLock { closed throws(StreamError) in
            if closed { throw StreamError.closed(peer: peer) }
            stream.write(with: build)
            try stream.flush()
            leftover.store(false, ordering: .releasing)
        }
    }

    /// Sends what `build` returns if no other thread is sending and the socket takes it
    /// without blocking: a slow or dead peer must not stall the thread that had the news.
    /// False when it did not all go — the lock was busy or the channel closed (nothing was
    /// built), bytes are left over, or the socket failed — and the caller must wake the
    /// writer thread, whose next `send` finishes the job or meets the error (see
    /// `hasLeftover`).
    public func sendNow(_ build: () -> [Message]) -> Bool {
        sendNow(encoding: { out in for m in build() { m.frame(into: &out) } })
    }

    /// `sendNow` for a builder that appends its frames to the output buffer itself.
    public func sendNow(encoding build: (inout [UInt8]) -> Void) -> Bool {
        sending.withLockIfAvailable { closed -> Bool in
            if closed { return false }
            stream.write(with: build)
            guard let done = try? stream.flushNow() else { return false }
            leftover.store(!done, ordering: .releasing)
            return done
        } ?? false
    }

    /// Closes the socket once no send is in progress; later sends throw. A thread still
    /// receiving is woken, and the descriptor is released when it returns (see `Socket`).
    public func close() {
        sending.withLock { $0 = true }
        stream.socket.close()
    }

    /// Bytes a `sendNow` could not write; the writer thread should `send` (even nothing).
    public var hasLeftover: Bool { leftover.load(ordering: .acquiring) }

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
