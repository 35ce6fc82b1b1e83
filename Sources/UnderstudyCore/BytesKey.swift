/// Bytes (a key, a tap's id) as a set member or dictionary key, hashed in one pass.
///
/// `[UInt8]`'s own `Hashable` feeds the hasher a byte at a time. Under callgrind that was a
/// third of the follower's instructions per streamed record (deduplicating each batch's
/// keys) and 8% of the keeper's per journaled record (looking up the tap's 16-byte id twice
/// per batch).
struct BytesKey: Hashable, Sendable {
    let bytes: [UInt8]

    init(_ bytes: [UInt8]) { self.bytes = bytes }

    func hash(into hasher: inout Hasher) {
        bytes.withUnsafeBytes { hasher.combine(bytes: $0) }
    }
}
