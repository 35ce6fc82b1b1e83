/// What `understudy status` reports, in the spirit of Redis's `INFO replication`.
/// Codable so `--json` and the human form come from one value.
public struct NodeStatus: Codable, Sendable {
    public var role: String
    public var epoch: UInt64
    public var state: String
    public var memcached: String
    public var listen: String
    public var peer: String?
    public var keeper: KeeperStatus?
    public var follower: FollowerStatus?
    public var lastInSync: Int64?
    /// The last recovery file written on demotion (writes only this node accepted).
    public var recoveryFile: String?
}

public struct KeeperCounters: Codable, Sendable, Equatable {
    public var records: UInt64 = 0
    public var gaps: UInt64 = 0
    public var partialResyncs: UInt64 = 0
    public var fullResyncs: UInt64 = 0
    public var authFailures: UInt64 = 0
}

public struct KeeperStatus: Codable, Sendable {
    public var runID: String
    public var endOffset: UInt64
    public var backlogFirstOffset: UInt64
    public var backlogRecords: Int
    public var backlogBytes: Int
    public var backlogLimitBytes: Int
    public var tapsConnected: Int
    public var followerConnected: Bool
    public var followerAddress: String
    public var followerApplied: UInt64
    public var followerInSync: Bool
    public var counters: KeeperCounters
}

public struct FullSyncReport: Codable, Sendable, Equatable {
    /// Unix time the sync finished.
    public var finishedAt: Int64
    public var durationMs: Int64
    public var keys: UInt64
    public var deleted: UInt64
    public var reason: String
}

public struct FullSyncProgress: Codable, Sendable, Equatable {
    public var keys: UInt64
    public var keysPerSecond: Double
    /// Estimated seconds left, from the active's `curr_items`.
    public var etaSeconds: Double?
    public var phase: String
}

public struct FollowerCounters: Codable, Sendable, Equatable {
    public var recordsApplied: UInt64 = 0
    public var keysCopied: UInt64 = 0
    public var keysDeleted: UInt64 = 0
    public var flushes: UInt64 = 0
    public var gaps: UInt64 = 0
    public var fullSyncs: UInt64 = 0
    public var partialResyncs: UInt64 = 0
    public var applyErrors: UInt64 = 0
    public var reconnects: UInt64 = 0
    /// `LRUWarmer` passes, the keys they marked on the passive, and those they deleted there
    /// (the active had evicted them).
    public var lruPasses: UInt64 = 0
    public var keysWarmed: UInt64 = 0
    public var keysTrimmed: UInt64 = 0
}

public struct FollowerStatus: Codable, Sendable {
    public var keeperAddress: String
    public var keeperRunID: String?
    public var receivedOffset: UInt64
    public var appliedOffset: UInt64
    public var lagRecords: UInt64
    /// Keeper receive → follower applied, for the last applied record; 0 when caught up.
    public var lagMs: Double
    public var inSync: Bool
    public var lastFullSync: FullSyncReport?
    public var fullSyncProgress: FullSyncProgress?
    public var lastError: String?
    public var counters: FollowerCounters
}
