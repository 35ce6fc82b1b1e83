/// A protocol's half of a proxied client: it turns the client's bytes into forwarded
/// requests and memcached's bytes into replies and journal records. The connection owns the
/// sockets and buffers; the session owns the protocol state (what is in flight, in order).
///
/// Every method runs on the connection's event loop and must not block: a request or reply
/// not yet complete in its buffer is left there until more bytes arrive.
protocol ProxySession: AnyObject {
    /// Handles every complete request in `c.clientIn`.
    func takeRequests(_ c: TapConnection)
    /// Consumes what it can of this client's next reply from `c.upstreamIn`, which the
    /// upstream hands it because the next reply there is this client's.
    func takeReply(_ c: TapConnection) -> ReplyProgress
    /// The upstream connection is gone: answer what was in flight with an error, and journal
    /// what may have been applied (a record too many is harmless, one too few is not).
    func upstreamLost(_ c: TapConnection, reason: String)
    /// Nothing forwarded awaits an answer and no local answer waits its turn.
    var isIdle: Bool { get }
    /// The session reads no more requests (quit, or a stream it cannot resynchronise).
    var wantsClose: Bool { get }
}

/// How far a session got with its next reply.
enum ReplyProgress {
    /// The rest has not arrived.
    case incomplete
    /// Part of a reply that goes on (a `VALUE`, a stats line, a quiet request's answer).
    case progress
    /// The request is answered; the next reply belongs to whoever is next in line.
    case done
}

/// Requests in flight, oldest first; replies come back in this order (Invariant: memcached
/// answers a connection's requests in order).
struct InFlight<Entry> {
    private var entries: [Entry] = []
    private var head = 0

    var isEmpty: Bool { head == entries.count }
    var first: Entry? { isEmpty ? nil : entries[head] }

    mutating func append(_ e: Entry) { entries.append(e) }

    mutating func updateFirst(_ body: (inout Entry) -> Void) { body(&entries[head]) }

    /// Returns nothing: copying the entry out (a command and its arrays) cost a retain and a
    /// release per field on every reply, for callers that had already read it with `first`.
    mutating func removeFirst() {
        head += 1
        if head == entries.count {
            entries.removeAll(keepingCapacity: true)
            head = 0
        }
    }

    /// Empties the queue, returning what was in it, oldest first.
    mutating func removeAll() -> ArraySlice<Entry> {
        let rest = entries[head...]
        entries = []
        head = 0
        return rest
    }
}

extension Optional {
    /// Opens a quiet group if none is open, and adds `e` (if any) to it.
    mutating func openOrAppend<E>(_ e: E?) where Wrapped == [E] {
        if self == nil { self = [] }
        if let e { self!.append(e) }
    }
}

/// An in-flight entry that may be an answer the tap gives itself.
protocol LocalAnswering {
    static func local(_ bytes: [UInt8]) -> Self
    var localAnswer: [UInt8]? { get }
}

extension InFlight where Entry: LocalAnswering {
    /// A local answer: now if nothing is in flight, else in its turn behind what is.
    mutating func answer(_ bytes: [UInt8], to c: TapConnection) {
        if isEmpty { c.replies.add(bytes) } else { append(.local(bytes)) }
    }

    /// Local answers queued behind the request just answered: their turn has come.
    mutating func answerLocals(to c: TapConnection) {
        while let bytes = first?.localAnswer {
            c.replies.add(bytes)
            removeFirst()
        }
    }
}
