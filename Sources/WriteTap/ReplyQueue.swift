import MemcacheProtocol
import UnderstudyPosix

/// A client's replies in request order, some of them held back until the follower applied
/// the write they answer (sync and strict modes).
///
/// A held reply blocks everything queued after it — a client pipelining a sync write and a
/// get must not see the get's answer first. In async mode nothing is ever held and replies
/// go straight to the output buffer.
struct ReplyQueue {
    /// How a refused sync write is answered in place of its reply.
    enum Refusal {
        /// The reply stands whatever the follower did (reads, a client's own fence).
        case none
        case text
        case binary(opcode: UInt8, opaque: UInt32)

        func reply(_ why: String) -> [UInt8]? {
            switch self {
            case .none: return nil
            case .text: return Array("SERVER_ERROR not replicated: \(why)\r\n".utf8)
            case .binary(let opcode, let opaque):
                return BinaryPacket.errorResponse(opcode: opcode, status: BinaryPacket.Status.temporaryFailure, opaque: opaque, message: "not replicated: \(why)")
            }
        }
    }

    private struct Held {
        var bytes: [UInt8]
        var ticket: TapEmitter.SyncTicket?
        var refusal: Refusal
    }

    var out = WriteBuffer()
    private var held: [Held] = []
    private var head = 0
    private var heldBytes = 0

    var isHolding: Bool { head < held.count }
    /// Bytes not yet taken by the client, held or not: what backpressure looks at.
    var backlog: Int { out.pending + heldBytes }

    mutating func add(_ bytes: UnsafeRawBufferPointer) {
        if !isHolding {
            out.append(bytes)
        } else if held[held.count - 1].ticket == nil {
            held[held.count - 1].bytes.append(contentsOf: bytes)
            heldBytes += bytes.count
        } else {
            held.append(Held(bytes: Array(bytes), ticket: nil, refusal: .none))
            heldBytes += bytes.count
        }
    }

    mutating func add(_ bytes: [UInt8]) {
        bytes.withUnsafeBytes { add($0) }
    }

    /// A reply that may go out only once `ticket` settles (nil: at once, in order).
    mutating func add(_ bytes: UnsafeRawBufferPointer, waitingFor ticket: TapEmitter.SyncTicket?, refusal: Refusal) {
        guard let ticket else { return add(bytes) }
        held.append(Held(bytes: Array(bytes), ticket: ticket, refusal: refusal))
        heldBytes += bytes.count
    }

    /// Moves every reply whose wait has settled to the output, in order. Returns when to
    /// look again if replies are still held, else nil.
    mutating func release(_ emitter: TapEmitter, now: UInt64) -> UInt64? {
        while head < held.count {
            let h = held[head]
            if let ticket = h.ticket {
                guard let outcome = emitter.settle(ticket, now: now) else { return ticket.nextCheck(now: now) }
                if let why = emitter.refusal(outcome), let refused = h.refusal.reply(why) {
                    out.append(refused)
                } else {
                    out.append(h.bytes)
                }
            } else {
                out.append(h.bytes)
            }
            heldBytes -= h.bytes.count
            head += 1
        }
        held.removeAll(keepingCapacity: true)
        head = 0
        return nil
    }
}
