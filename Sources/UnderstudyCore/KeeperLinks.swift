import JournalWire
import Synchronization

/// A tap's journal connection as the keeper writes to it. Two threads write: the tap's writer
/// thread (acks, sync state, keepalives) and the follower-ack thread, which sends a new
/// applied seq itself, so a sync write waiting on it is not also waiting for the writer
/// thread to be scheduled.
final class TapLink: Sendable {
    let ch: JournalChannel
    let tapID: BytesKey
    /// False for an async tap: nothing there waits on applied seqs, and relaying one per
    /// follower ack would wake its reader about a thousand times a second for nothing.
    let wantsApplied: Bool
    /// The highest applied seq sent; changed only under the channel's send lock.
    let sentApplied = Atomic<UInt64>(0)

    /// How long acks to this tap may wait to go out together. Acks only let the tap free its
    /// buffer; a sync or strict tap hears them sooner because its reader wakes for applied
    /// seqs anyway, while an async tap's reader wakes for nothing else: 10 ms there cut the
    /// keeper's tap-writer and the tap's ack reader from about 900 and 430 wake-ups a second
    /// to a quarter (one connection of sets, 24k/s), at up to 500 more records held at 50k/s.
    var ackCoalesceMs: Int { wantsApplied ? 2 : 10 }

    init(_ ch: JournalChannel, tapID: BytesKey, wantsApplied: Bool) {
        self.ch = ch
        self.tapID = tapID
        self.wantsApplied = wantsApplied
    }

    /// Whether `applied` should go to this tap.
    func hasAppliedNews(_ applied: UInt64) -> Bool {
        wantsApplied && applied > sentApplied.load(ordering: .relaxed)
    }

    /// The applied message if `applied` is news. Call under the channel's send lock, so two
    /// threads never both send (or both skip) the same news.
    func appliedNews(_ applied: UInt64) -> [Message] {
        guard hasAppliedNews(applied) else { return [] }
        sentApplied.store(applied, ordering: .relaxed)
        return [.tapApplied(seq: applied)]
    }
}

/// The follower's journal connection as the keeper streams to it: from the streamer thread,
/// or straight from the thread that journaled the records when the link is free.
final class FollowerLink: Sendable {
    let ch: JournalChannel
    let id: Int
    /// The next offset to send; changed only under the channel's send lock, so batches go
    /// out in offset order whichever thread sends them.
    let cursor: Atomic<UInt64>

    init(_ ch: JournalChannel, id: Int, from: UInt64) {
        self.ch = ch
        self.id = id
        self.cursor = Atomic(from)
    }
}
