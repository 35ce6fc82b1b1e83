import MemcacheClient
import MemcacheProtocol
import UnderstudyPosix

/// `understudy verify`: compares every key's value, flags, TTL and staleness on two memcacheds.
public struct Verifier {
    public var active: Endpoint
    public var passive: Endpoint
    /// Remaining-TTL difference tolerated, in seconds (the copy happened a moment later).
    public var ttlTolerance: Int64 = 2
    /// Added for an expiry more than 30 days out, which memcached holds as an absolute time:
    /// it reaches each memcached through that process's start time, whole seconds of a wall
    /// clock, and its remaining TTL through a monotonic one, so two memcacheds can disagree
    /// by a second or two more on the very same expiry (3 s apart was seen on a loaded
    /// machine, where a relative TTL never was).
    static let absoluteExpirySlack: Int64 = 2
    public var batchSize = 500

    public init(active: Endpoint, passive: Endpoint) {
        self.active = active
        self.passive = passive
    }

    public struct Difference: Sendable, CustomStringConvertible {
        public var key: [UInt8]
        public var what: String
        public var description: String { "\(Bytes.text(key, limit: 80)): \(what)" }
    }

    public struct Report: Sendable {
        public var compared = 0
        public var missing = 0
        public var extra = 0
        public var valueDiffs = 0
        public var flagDiffs = 0
        public var ttlDiffs = 0
        /// Stale on one side only (`MetaReply.awaitsRecache`: on the active, a placeholder or
        /// a refresh under way counts as stale, as its copy is).
        public var staleDiffs = 0
        public var first: [Difference] = []
        public var total: Int { missing + extra + valueDiffs + flagDiffs + ttlDiffs + staleDiffs }
    }

    public func run(showing limit: Int = 20) throws(MemcacheError) -> Report {
        var report = Report()
        let a = try MemcacheConnection(active, ioTimeoutMs: 10_000)
        let p = try MemcacheConnection(passive, ioTimeoutMs: 10_000)
        defer { a.close(); p.close() }
        var seen = Set<UInt64>()
        var batch: [[UInt8]] = []

        func note(_ key: [UInt8], _ what: String) {
            if report.first.count < limit { report.first.append(Difference(key: key, what: what)) }
        }
        func compare() throws(MemcacheError) {
            let ra = try a.peek(batch, ["v", "f", "t"])
            let rp = try p.peek(batch, ["v", "f", "t"])
            for (i, k) in batch.enumerated() {
                let x = ra[i], y = rp[i]
                if x.status != .va { continue }  // gone from the active since the dump: nothing to hold
                report.compared += 1
                guard y.status == .va else {
                    report.missing += 1
                    note(k, "missing on passive")
                    continue
                }
                if x.value != y.value {
                    report.valueDiffs += 1
                    note(k, "value differs (\(x.value?.count ?? 0) vs \(y.value?.count ?? 0) bytes)")
                }
                if x.flag("f") != y.flag("f") {
                    report.flagDiffs += 1
                    note(k, "flags \(Bytes.text(x.flag("f") ?? [])) vs \(Bytes.text(y.flag("f") ?? []))")
                }
                if x.awaitsRecache != y.awaitsRecache {
                    report.staleDiffs += 1
                    note(k, "stale on the \(x.awaitsRecache ? "active" : "passive") only")
                }
                let ta = x.intFlag("t") ?? -1, tp = y.intFlag("t") ?? -1
                let tolerance = ttlTolerance + (ta > Expiry.relativeLimit ? Self.absoluteExpirySlack : 0)
                if (ta == -1) != (tp == -1) || abs(ta - tp) > tolerance {
                    report.ttlDiffs += 1
                    note(k, "ttl \(ta) vs \(tp)")
                }
            }
            batch.removeAll(keepingCapacity: true)
        }

        do {
            let feed = MetadumpFeed(active, batchSize: batchSize)
            defer { feed.stop() }
            while let keys = try feed.next() {
                for k in keys { seen.insert(FullSync.hash(k)) }
                batch = keys
                try compare()
            }
            // Keys only the passive has.
            let passiveFeed = MetadumpFeed(passive, batchSize: batchSize)
            defer { passiveFeed.stop() }
            while let keys = try passiveFeed.next() {
                let extras = keys.filter { !seen.contains(FullSync.hash($0)) }
                if extras.isEmpty { continue }
                let rp = try p.peek(extras, [])
                let ra = try a.peek(extras, [])
                for (i, k) in extras.enumerated() where rp[i].isHit && !ra[i].isHit {
                    report.extra += 1
                    note(k, "only on passive")
                }
            }
        } catch let e as MemcacheError {
            throw e
        } catch FullSync.Failure.memcached(let m) {
            throw m
        } catch {
            throw .protocolError(.unexpected("\(error)"))
        }
        return report
    }
}
