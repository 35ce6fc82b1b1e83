import UnderstudyPosix

/// Prometheus text exposition over a minimal HTTP/1.0 responder: any GET gets the metrics.
struct MetricsServer {
    let node: Node

    func run(_ listener: Listener) {
        listener.serve("metrics") { [node] conn in MetricsServer(node: node).serve(conn) }
    }

    func serve(_ conn: Socket) {
        defer { conn.close() }
        try? conn.setIOTimeout(milliseconds: 5000)
        let stream = ByteStream(conn, capacity: 8192)
        // Read the request head; we answer every path the same way.
        for _ in 0..<100 {
            guard let l = try? stream.readLine(limit: 8192) else { return }
            if l.isEmpty { break }
        }
        let body = Self.render(node.status)
        stream.write("HTTP/1.0 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: \(body.utf8.count)\r\nConnection: close\r\n\r\n")
        stream.write(body)
        try? stream.flush()
    }

    static func render(_ s: NodeStatus) -> String {
        var out = ""
        func metric(_ name: String, _ help: String, _ type: String = "gauge", value: Double) {
            out += "# HELP understudy_\(name) \(help)\n# TYPE understudy_\(name) \(type)\nunderstudy_\(name) \(value)\n"
        }
        metric("epoch", "Highest epoch this node has seen.", value: Double(s.epoch))
        metric("role_active", "1 if this node keeps the journal.", value: s.role == "active" ? 1 : 0)
        if let k = s.keeper {
            metric("journal_end_offset", "Offset of the newest journal record.", value: Double(k.endOffset))
            metric("backlog_records", "Records held in the backlog.", value: Double(k.backlogRecords))
            metric("backlog_bytes", "Estimated backlog memory.", value: Double(k.backlogBytes))
            metric("taps_connected", "Connected taps.", value: Double(k.tapsConnected))
            metric("follower_in_sync", "1 if a follower is streaming.", value: k.followerInSync ? 1 : 0)
            metric("follower_applied_offset", "Offset the follower reports applied.", value: Double(k.followerApplied))
            metric("journal_records_total", "Records journaled.", "counter", value: Double(k.counters.records))
            metric("journal_gaps_total", "Gaps recorded in the journal.", "counter", value: Double(k.counters.gaps))
            metric("auth_failures_total", "Refused journal handshakes.", "counter", value: Double(k.counters.authFailures))
        }
        if let f = s.follower {
            metric("received_offset", "Newest journal offset received.", value: Double(f.receivedOffset))
            metric("applied_offset", "Newest journal offset applied locally.", value: Double(f.appliedOffset))
            metric("lag_records", "Journal records not yet applied.", value: Double(f.lagRecords))
            metric("lag_milliseconds", "Keeper receive to follower apply, last record.", value: f.lagMs)
            metric("in_sync", "1 if streaming with a complete copy.", value: f.inSync ? 1 : 0)
            metric("keys_copied_total", "Keys copied from the active.", "counter", value: Double(f.counters.keysCopied))
            metric("keys_deleted_total", "Keys deleted locally.", "counter", value: Double(f.counters.keysDeleted))
            metric("gaps_total", "Journal gaps seen.", "counter", value: Double(f.counters.gaps))
            metric("full_syncs_total", "Full syncs completed.", "counter", value: Double(f.counters.fullSyncs))
            metric("partial_resyncs_total", "Resumes from the backlog.", "counter", value: Double(f.counters.partialResyncs))
            metric("lru_passes_total", "Passes marking on the passive the keys the app reads on the active.", "counter",
                   value: Double(f.counters.lruPasses))
            metric("keys_warmed_total", "Keys those passes marked.", "counter", value: Double(f.counters.keysWarmed))
            metric("keys_trimmed_total", "Keys those passes deleted: the active had evicted them.", "counter",
                   value: Double(f.counters.keysTrimmed))
            if let p = f.fullSyncProgress { metric("full_sync_keys", "Keys copied by the running full sync.", value: Double(p.keys)) }
        }
        return out
    }
}
