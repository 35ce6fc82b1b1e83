import CLinuxEvents
import Glibc

/// glibc malloc settings for the daemon, chosen so the journal's growth does not change the
/// process's memory map while records stream.
///
/// By default every thread that allocates gets its own arena, and a thread's arena grows by
/// one `mprotect` each time it passes its previous size: at 50k writes/s the keeper's tap
/// reader made about 135 such calls a second while its backlog filled. Each takes the
/// process's memory-map locks for writing, and on a VM whose reclaim (DAMON's `pageout`)
/// walks those same locks, the reader was caught twice in uninterruptible sleep inside one
/// (`vma_prepare`), for up to 0.87 s, with the tap's records piling up unread in the socket:
/// a replication stall from a memory-map lock. With one arena, heap growth in 64 MiB steps
/// (`M_TOP_PAD`), allocations up to 32 MiB from the heap rather than each its own `mmap`, and
/// freed memory kept until 128 MiB of it sit at the top, the same load makes no memory-map
/// calls at all. One arena means threads share malloc's lock for what their per-thread
/// caches (tcache) do not serve; README "What the measurements changed" has what that cost.
public enum Allocator {
    public static let topPad: Int32 = 64 << 20
    /// glibc's ceiling for `M_MMAP_THRESHOLD` on 64-bit (half its 64 MiB heap size).
    public static let mmapThreshold: Int32 = 32 << 20
    public static let trimThreshold: Int32 = 128 << 20

    public enum Outcome: Equatable, Sendable {
        case tuned
        /// `GLIBC_TUNABLES` names malloc settings: the operator's choice stands.
        case leftToOperator
        /// glibc refused one setting (named); the ones before it were taken.
        case refused(String)
    }

    /// Call before the daemon starts its threads: an arena limit binds only threads that have
    /// not allocated yet.
    public static func holdMemoryMapSteady(environment: [String: String]) -> Outcome {
        if environment["GLIBC_TUNABLES"]?.contains("glibc.malloc.") == true { return .leftToOperator }
        switch ule_tune_malloc(1, topPad, mmapThreshold, trimThreshold) {
        case 0: return .tuned
        case 1: return .refused("M_ARENA_MAX")
        case 2: return .refused("M_TOP_PAD")
        case 3: return .refused("M_MMAP_THRESHOLD")
        default: return .refused("M_TRIM_THRESHOLD")
        }
    }
}
