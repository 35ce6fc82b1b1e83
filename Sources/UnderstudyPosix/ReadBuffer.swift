import Glibc

/// Bytes read from a non-blocking socket and not yet consumed, for event-loop parsers.
///
/// Parsers look ahead (`line`, `count`, `byte`) and consume only whole messages, so a
/// message split across reads is simply parsed again when the rest arrives. Offsets are
/// relative to the first unconsumed byte.
public final class ReadBuffer {
    /// A buffer has one owner thread (a tap loop, a stream's reader), so Swift's runtime
    /// exclusivity check, paid on every access, guards nothing here (see `TapLoop`).
    @exclusivity(unchecked) private var storage: UnsafeMutableRawBufferPointer
    private var start = 0
    private var end = 0
    private let initialCapacity: Int

    public init(capacity: Int = 16 * 1024) {
        initialCapacity = capacity
        storage = .allocate(byteCount: capacity, alignment: 16)
    }

    deinit { storage.deallocate() }

    public var count: Int { end - start }
    public var isEmpty: Bool { end == start }

    public enum Fill: Equatable { case read(Int), wouldBlock, endOfStream }

    /// One read into the free space, first made at least `room` bytes. Non-blocking by
    /// default (event loops); `blocking` waits up to the socket's I/O timeout (`ByteStream`).
    public func fill(from socket: Socket, blocking: Bool = false, room: Int = 64 * 1024) throws(SystemError) -> Fill {
        reserve(room)
        let space = UnsafeMutableRawBufferPointer(rebasing: storage[end...])
        let n: Int
        if blocking {
            n = try socket.read(into: space)
        } else {
            guard let got = try socket.readNow(into: space) else { return .wouldBlock }
            n = got
        }
        if n == 0 { return .endOfStream }
        end += n
        return .read(n)
    }

    private func reserve(_ room: Int) {
        if start == end {
            start = 0
            end = 0
            // A huge message is done with: give its memory back.
            if storage.count > 4 * 1024 * 1024 && room <= initialCapacity * 4 {
                storage.deallocate()
                storage = .allocate(byteCount: initialCapacity, alignment: 16)
            }
        }
        if storage.count - end >= room { return }
        if start > 0 {
            storage.baseAddress!.copyMemory(from: storage.baseAddress! + start, byteCount: end - start)
            end -= start
            start = 0
            if storage.count - end >= room { return }
        }
        var size = storage.count
        while size - end < room { size *= 2 }
        let bigger = UnsafeMutableRawBufferPointer.allocate(byteCount: size, alignment: 16)
        bigger.baseAddress!.copyMemory(from: storage.baseAddress!, byteCount: end)
        storage.deallocate()
        storage = bigger
    }

    public func byte(at offset: Int) -> UInt8 { storage[start + offset] }

    /// The next complete line: its length without the terminator, and with it. CRLF ends a
    /// line; with `lfOnly` a bare LF does (memcached's metadump).
    public func line(lfOnly: Bool = false) -> (length: Int, total: Int)? {
        guard end > start, let base = storage.baseAddress else { return nil }
        var i = start
        while i < end {
            guard let p = memchr(base + i, 0x0A, end - i) else { return nil }
            let nl = UnsafeRawPointer(base).distance(to: UnsafeRawPointer(p))
            if lfOnly { return (nl - start, nl + 1 - start) }
            if nl > start && storage[nl - 1] == 0x0D { return (nl - 1 - start, nl + 1 - start) }
            i = nl + 1
        }
        return nil
    }

    /// Offset of the first LF, if any: where an over-long line ends.
    public func firstLF() -> Int? {
        guard end > start, let p = memchr(storage.baseAddress! + start, 0x0A, end - start) else { return nil }
        return UnsafeRawPointer(storage.baseAddress! + start).distance(to: UnsafeRawPointer(p))
    }

    public func bytes(_ range: Range<Int>) -> [UInt8] { Array(view(range)) }

    /// A view of unconsumed bytes, valid until the next call that fills or consumes.
    public func view(_ range: Range<Int>) -> UnsafeRawBufferPointer {
        UnsafeRawBufferPointer(rebasing: storage[(start + range.lowerBound)..<(start + range.upperBound)])
    }

    /// A view of unconsumed bytes, valid only inside `body`.
    public func withBytes<R>(_ range: Range<Int>, _ body: (UnsafeRawBufferPointer) -> R) -> R { body(view(range)) }

    public func consume(_ n: Int) {
        precondition(n <= count, "consumed more than buffered")
        start += n
    }

    public func removeAll() { start = end }

    /// Drops what is here of `remaining` bytes (a refused body still arriving) and counts
    /// them off. True once all of them are gone.
    public func discard(_ remaining: inout Int) -> Bool {
        let n = min(remaining, count)
        consume(n)
        remaining -= n
        return remaining == 0
    }
}
