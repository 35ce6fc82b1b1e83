/// A key as a set member, hashed in one pass over its bytes.
///
/// `[UInt8]`'s own `Hashable` feeds the hasher a byte at a time: deduplicating each streamed
/// batch that way was a third of the follower's instructions per record under callgrind.
struct KeySetMember: Hashable {
    let key: [UInt8]

    func hash(into hasher: inout Hasher) {
        key.withUnsafeBytes { hasher.combine(bytes: $0) }
    }
}
