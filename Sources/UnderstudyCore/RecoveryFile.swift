import Foundation
import JournalWire
import MemcacheClient
import MemcacheProtocol
import UnderstudyPosix

/// Writes that only this node accepted — journaled by its keeper but never applied by a
/// follower — saved before the node demotes and its memcached is overwritten by a full sync
/// (Invariant 7). One JSON object per line (format in README.md, "Recovery file"):
///
/// `{"epoch":3,"run_id":"9f…","offset":1042,"op":"write","key_b64":"…","found":true,
///   "flags":0,"exptime":1795310000,"value_b64":"…"}`
///
/// plus a final `{"summary":…}` line. `exptime` is absolute unix time (0: never), so the file
/// can be replayed with any client. The file is fsynced before the demotion goes on; if that
/// fails (a full disk), the demotion fails and the data stays.
struct RecoveryFile {
    struct Line: Codable {
        var epoch: UInt64
        var run_id: String
        var offset: UInt64
        var op: String
        var key_b64: String
        var found: Bool
        var flags: String?
        var exptime: Int64?
        var value_b64: String?
    }

    struct Summary: Codable {
        var summary: String
        var keys: Int
        var lost_from_backlog: UInt64
        var written_at: Int64
    }

    /// Saves `orphans` with their current values from `memcached`; returns the path.
    static func write(orphans: [StreamRecord], lostFromBacklog: UInt64, epoch: UInt64, runID: UInt64,
                      memcached: Endpoint, dir: String) throws -> String {
        let path = "\(dir)/recovery-epoch\(epoch)-\(Clock.unixSeconds()).jsonl"
        var latest: [[UInt8]: StreamRecord] = [:]
        for r in orphans where r.op != .gap && r.op != .flush { latest[r.key] = r }
        let keys = orphans.filter { latest[$0.key]?.offset == $0.offset }
        var out: [UInt8] = []
        let enc = JSONEncoder()
        enc.outputFormatting = [.sortedKeys]
        let conn = try? MemcacheConnection(memcached, ioTimeoutMs: 5000)
        defer { conn?.close() }
        let now = Clock.unixSeconds()
        for chunk in stride(from: 0, to: keys.count, by: 500) {
            let slice = Array(keys[chunk..<min(keys.count, chunk + 500)])
            let replies = (try? conn?.peek(slice.map(\.key), ["v", "f", "t"])) ?? nil
            for (i, r) in slice.enumerated() {
                var line = Line(epoch: epoch, run_id: String(runID, radix: 16), offset: r.offset, op: r.op.description,
                                key_b64: String(decoding: Base64.encode(r.key), as: UTF8.self), found: false)
                if let reply = replies?[i], reply.status == .va {
                    line.found = true
                    line.flags = reply.flag("f").map { String(decoding: $0, as: UTF8.self) } ?? "0"
                    let t = reply.intFlag("t") ?? -1
                    line.exptime = t < 0 ? 0 : now + t
                    line.value_b64 = String(decoding: Base64.encode(reply.value ?? []), as: UTF8.self)
                }
                out += Array(try enc.encode(line)) + [0x0A]
            }
        }
        let summary = Summary(summary: conn == nil ? "memcached unreachable: keys listed without values" : "complete",
                              keys: keys.count, lost_from_backlog: lostFromBacklog, written_at: now)
        out += Array(try enc.encode(summary)) + [0x0A]
        try Files.appendDurably(out, to: path)
        return path
    }
}
