import Synchronization

/// Sockets shut down together when their owner stops, so a thread blocked on one fails at
/// once instead of waiting out its I/O timeout (a host that vanished mid-reply answers
/// nothing, ever). A socket that joins after `trip` is shut down as it joins, so a stop
/// cannot miss a connection opened while it ran: once tripped, nothing the owner sends
/// through its members leaves this process.
///
/// Members are held weakly: a socket its owner closed and dropped simply falls out.
public final class Interrupter: Sendable {
    private struct Member: Sendable {
        weak var socket: Socket?
    }

    private let state = Mutex<(tripped: Bool, members: [Member])>((false, []))

    public init() {}

    public func add(_ socket: Socket) {
        let tripped = state.withLock { s -> Bool in
            guard !s.tripped else { return true }
            s.members.removeAll { $0.socket == nil }
            s.members.append(Member(socket: socket))
            return false
        }
        if tripped { socket.shutdown() }
    }

    /// Shuts down every member, now and as they join.
    public func trip() {
        let members = state.withLock { s -> [Member] in
            s.tripped = true
            defer { s.members = [] }
            return s.members
        }
        for m in members { m.socket?.shutdown() }
    }
}
