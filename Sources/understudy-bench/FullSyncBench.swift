import Foundation
import UnderstudyPosix

/// Full sync: Understudy's follower vs the Python reference copier vs the destination's own
/// pipelined ingest rate, on the same key set, each on a fresh destination.
enum FullSyncBench {
    static func run(keys: Int, size: Int, runs: Int, followerPy: String, table: Table) throws {
        var ingest = Figure(), python = Figure(), ours = Figure()
        let label = "full sync \(keys / 1000)k × \(size) B"
        for r in 1...runs {
            let pair = try BenchPair()
            defer { pair.stop() }
            let rate = try fill(pair.srcEP, count: keys, size: size)
            ingest.values.append(rate)
            log("\(label) run \(r): ingest \(fmt(rate)) keys/s")

            if FileManager.default.fileExists(atPath: followerPy), let py = Env.which("python3") {
                let (pyDst, pyEP) = try Env.memcached()
                defer { pyDst.stop() }
                let out = try Env.run(py, [followerPy, String(pair.srcEP.port), String(pyEP.port), "1000", "hash", "0"])
                if let line = out.split(separator: "\n").first(where: { $0.hasPrefix("total") }),
                   let arrow = line.range(of: "-> "), let v = Double(line[arrow.upperBound...].split(separator: " ")[0]) {
                    python.values.append(v)
                    log("\(label) run \(r): python reference \(fmt(v)) keys/s")
                } else {
                    log("python reference printed no total: \(out.prefix(300))")
                }
            }

            try pair.startKeeper()
            try pair.startFollower()
            let deadline = Date().addingTimeInterval(600)
            var report: [String: Any]?
            // The rate comes from the follower's own report (durationMs), so polling sparsely
            // costs nothing in accuracy and leaves the run its CPU.
            while Date() < deadline {
                if let l = pair.follower("lastFullSync") as? [String: Any] { report = l; break }
                usleep(100_000)
            }
            guard let report, let ms = report["durationMs"] as? Int, let k = report["keys"] as? Int else {
                throw BenchError("full sync did not finish")
            }
            let v = Double(k) / (Double(max(ms, 1)) / 1000)
            ours.values.append(v)
            log("\(label) run \(r): understudy \(fmt(v)) keys/s (\(k) keys in \(ms) ms)")
        }
        table.add(label, "dst ingest keys/s", ingest)
        table.add(label, "python follower.py keys/s", python)
        table.add(label, "understudy keys/s", ours, baseline: "python", ratio: ours.median / python.median, goal: "≥ 3×")
        table.add(label, "understudy keys/s", ours, baseline: "ingest", ratio: ours.median / ingest.median, goal: "≥ 0.8×")
    }
}
