import Foundation
import UnderstudyCore
import UnderstudyPosix

/// `status`, `promote`, `demote`, `resync`: one request over the control socket.
enum ControlCommand {
    static func run(_ cmd: String, _ args: [String]) -> Int32 {
        if args.contains("--help") {
            print("usage: understudy \(cmd) [--control PATH]\(cmd == "status" ? " [--json]" : "")")
            return 0
        }
        let o: Options
        do { o = try Options(args, valued: ["control"], switches: cmd == "status" ? ["json"] : []) } catch {
            printError("understudy \(cmd): \(error.message)")
            return 64
        }
        let path = o.values["control"] ?? Config().control
        let reply: String
        do {
            reply = try ControlClient.request(cmd, path: path)
        } catch {
            printError("understudy \(cmd): cannot reach the daemon at \(path): \(error)")
            return 1
        }
        if reply.hasPrefix("ERR ") {
            printError("understudy \(cmd): \(reply.dropFirst(4))")
            return 1
        }
        if cmd != "status" {
            print(reply.hasPrefix("OK ") ? String(reply.dropFirst(3)) : reply)
            return 0
        }
        if o.flags.contains("json") {
            print(reply)
            return 0
        }
        guard let status = try? JSONDecoder().decode(NodeStatus.self, from: Data(reply.utf8)) else {
            printError("understudy status: unreadable reply")
            return 1
        }
        print(StatusText.render(status), terminator: "")
        return 0
    }
}

/// The human form of `understudy status`, `INFO replication` style: `name:value` lines.
enum StatusText {
    static func render(_ s: NodeStatus) -> String {
        var out = "role:\(s.role)\nepoch:\(s.epoch)\nstate:\(s.state)\nmemcached:\(s.memcached)\nlisten:\(s.listen)\n"
        if let p = s.peer { out += "peer:\(p)\n" }
        if let k = s.keeper {
            out += "run_id:\(k.runID)\njournal_end_offset:\(k.endOffset)\nbacklog_first_offset:\(k.backlogFirstOffset)\n"
            out += "backlog_records:\(k.backlogRecords)\nbacklog_bytes:\(k.backlogBytes)/\(k.backlogLimitBytes)\n"
            out += "taps_connected:\(k.tapsConnected)\nfollower_connected:\(k.followerConnected)\nfollower_address:\(k.followerAddress)\n"
            out += "follower_applied_offset:\(k.followerApplied)\nfollower_in_sync:\(k.followerInSync)\n"
            out += "records:\(k.counters.records)\ngaps:\(k.counters.gaps)\npartial_resyncs:\(k.counters.partialResyncs)\n"
            out += "full_resyncs:\(k.counters.fullResyncs)\nauth_failures:\(k.counters.authFailures)\n"
        }
        if let f = s.follower {
            out += "keeper_address:\(f.keeperAddress)\nkeeper_run_id:\(f.keeperRunID ?? "-")\n"
            out += "received_offset:\(f.receivedOffset)\napplied_offset:\(f.appliedOffset)\n"
            out += "lag_records:\(f.lagRecords)\nlag_ms:\(String(format: "%.3f", f.lagMs))\nin_sync:\(f.inSync)\n"
            if let p = f.fullSyncProgress {
                out += "full_sync_phase:\(p.phase)\nfull_sync_keys:\(p.keys)\nfull_sync_rate:\(Int(p.keysPerSecond))/s\n"
                if let eta = p.etaSeconds { out += "full_sync_eta_s:\(Int(eta))\n" }
            }
            if let l = f.lastFullSync {
                out += "last_full_sync_at:\(l.finishedAt)\nlast_full_sync_ms:\(l.durationMs)\nlast_full_sync_keys:\(l.keys)\nlast_full_sync_reason:\(l.reason)\n"
            }
            let c = f.counters
            out += "keys_copied:\(c.keysCopied)\nkeys_deleted:\(c.keysDeleted)\nrecords_applied:\(c.recordsApplied)\n"
            out += "gaps:\(c.gaps)\nfull_syncs:\(c.fullSyncs)\npartial_resyncs:\(c.partialResyncs)\nflushes:\(c.flushes)\napply_errors:\(c.applyErrors)\n"
            out += "lru_passes:\(c.lruPasses)\nkeys_warmed:\(c.keysWarmed)\nkeys_trimmed:\(c.keysTrimmed)\n"
            if let e = f.lastError { out += "last_error:\(e)\n" }
        }
        if let t = s.lastInSync { out += "last_in_sync:\(t)\n" }
        if let r = s.recoveryFile { out += "recovery_file:\(r)\n" }
        return out
    }
}
