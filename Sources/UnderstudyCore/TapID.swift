/// A tap's identity as the keeper's dictionary key, hashed once when the tap connects.
///
/// The id is bytes the tap chose (16 random ones). As `[UInt8]` every lookup hashed it a byte
/// at a time, twice per journaled batch: under callgrind that was 8% of the keeper's
/// instructions per record.
struct TapID: Hashable, Sendable {
    let bytes: [UInt8]
    private let hash: Int

    init(_ bytes: [UInt8]) {
        self.bytes = bytes
        var h = Hasher()
        h.combine(bytes)
        hash = h.finalize()
    }

    func hash(into hasher: inout Hasher) { hasher.combine(hash) }

    static func == (a: TapID, b: TapID) -> Bool { a.hash == b.hash && a.bytes == b.bytes }
}
