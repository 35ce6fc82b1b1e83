import Foundation
import UnderstudyPosix

/// Where the follower is, persisted so a restarted follower process can resume with a partial
/// resync (like Redis's replication id + offset). Written atomically.
struct FollowerPosition: Codable, Equatable {
    var runID: UInt64
    var applied: UInt64
    /// The local memcached that holds the copy at this position.
    var local: MemcachedIdentity
    /// The active memcached that copy was taken from.
    var active: MemcachedIdentity?

    static func load(from dir: String) -> FollowerPosition? {
        guard let bytes = try? Files.read(dir + "/follower.json") else { return nil }
        return try? JSONDecoder().decode(FollowerPosition.self, from: Data(bytes))
    }

    func save(to dir: String) throws {
        let data = try JSONEncoder().encode(self)
        try Files.writeAtomically(Array(data), to: dir + "/follower.json")
    }

    static func forget(in dir: String) { Sys.unlink(dir + "/follower.json") }
}
