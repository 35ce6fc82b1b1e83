/// How either end of a journal connection tells a dead peer from a quiet one.
///
/// A node that crashes with its link cut sends no FIN or RST, and TCP alone would take minutes
/// to notice. A sync-mode tap must not answer a client while its keeper may be dead (the write
/// may then exist nowhere), so the keeper speaks at least every `keepaliveMs`, and a tap that
/// hears nothing for `silenceLimitMs` drops the connection as lost.
public enum JournalTiming {
    public static let keepaliveMs = 250
    /// Four keepalives: a loaded 2-core machine can delay a thread by a few hundred ms.
    public static let silenceLimitMs = 1000
    /// Between keeper and follower both ends are busier (a full sync, a large batch) and
    /// nothing waits on a client, so each side allows the other longer.
    public static let followerSilenceLimitMs = 3000
}
