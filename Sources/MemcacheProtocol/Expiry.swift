/// memcached's expiry rules, in one place.
///
/// A TTL of up to 30 days is relative; anything larger is an absolute unix time. `mg` reports
/// the remaining seconds (`t`), `-1` meaning never. Copying a 40-day item with a relative `T`
/// would be read back as a date in 1970 and expire it at once, so long TTLs go out absolute.
public enum Expiry {
    public static let relativeLimit: Int64 = 2_592_000

    /// The `T`/exptime to send for an item with `remaining` seconds left (as `mg t` reports).
    public static func exptime(remaining: Int64, now: Int64) -> Int64 {
        if remaining < 0 { return 0 }
        if remaining > relativeLimit { return now + remaining }
        // An item with 0 s left is about to expire; keep it for the second it has.
        return Swift.max(remaining, 1)
    }
}
