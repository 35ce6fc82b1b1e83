import MemcacheClient
import UnderstudyPosix

/// Which memcached process is answering at an address: its pid and start time.
///
/// A memcached that restarted is empty. If the local one restarted, the follower's copy is
/// gone; if the active one did, the copy holds keys the active lost. Either way the journal
/// offsets say nothing about it, so a changed identity forces a full sync.
struct MemcachedIdentity: Codable, Equatable, Sendable, CustomStringConvertible {
    var pid: Int
    var startedAt: Int64

    static func read(_ conn: MemcacheConnection) throws(MemcacheError) -> MemcachedIdentity {
        let s = try conn.stats()
        guard let pid = s["pid"].flatMap({ Int($0) }), let time = s["time"].flatMap({ Int64($0) }),
              let up = s["uptime"].flatMap({ Int64($0) }) else {
            throw .protocolError(.unexpected("stats without pid/time/uptime"))
        }
        return MemcachedIdentity(pid: pid, startedAt: time - up)
    }

    /// Same process; start times are compared loosely because `time - uptime` can tick between reads.
    func sameProcess(as other: MemcachedIdentity) -> Bool {
        pid == other.pid && abs(startedAt - other.startedAt) <= 2
    }

    var description: String { "pid \(pid) started \(startedAt)" }
}
