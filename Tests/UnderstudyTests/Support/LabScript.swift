import Foundation
import UnderstudyPosix

/// A namespace lab under heartbeat/lab/: `check` says whether this machine can run it,
/// `run` plays the scenario and prints `RESULT key=value` lines the tests hold it to.
struct LabScript {
    let path: String

    init(_ name: String) {
        path = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
            .appendingPathComponent("../../../heartbeat/lab/\(name)").standardized.path
    }

    func environment(python: String, extra: [String: String] = [:]) -> [String: String] {
        ["UNDERSTUDY_BIN": Paths.understudy, "PYTHON": python, "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"].merging(extra) { $1 }
    }

    /// Why the lab cannot run here, or nil. Checked, not assumed: a machine without
    /// namespaces or the cluster packages skips with this reason printed, never a silent pass.
    var unavailable: String? {
        guard let python = try? Paths.pythonWithPymemcache() else { return "no python3 with pymemcache" }
        guard let r = try? Subprocess.run("/bin/bash", [path, "check"], environment: environment(python: python), timeoutMs: 30_000) else {
            return "cannot run \(path)"
        }
        return r.exit.code == 0 ? nil : "\((path as NSString).lastPathComponent) unavailable: \(r.output.trimmingCharacters(in: .whitespacesAndNewlines))"
    }

    /// Runs the scenario (bounded by the script's own watchdog, and by `timeout` here);
    /// returns its RESULT pairs and the whole output.
    func run(label: String, maxSeconds: Int, timeout: Double) throws -> (results: [String: String], output: String) {
        let python = try Paths.pythonWithPymemcache()
        let r = try Subprocess.run("/bin/bash", [path, "run"], environment: environment(python: python, extra: [
            "MAX_SECONDS": String(maxSeconds), "LAB_STATE": Paths.tempDir(label),
        ]), timeoutMs: Int(timeout * 1000))
        var results: [String: String] = [:]
        for line in r.output.split(separator: "\n") where line.hasPrefix("RESULT ") {
            for pair in line.dropFirst(7).split(separator: " ") {
                let kv = pair.split(separator: "=", maxSplits: 1)
                if kv.count == 2 { results[String(kv[0])] = String(kv[1]) }
            }
        }
        print(r.output)
        return (results, r.output + (r.timedOut ? "\n(killed after \(timeout) s)" : ""))
    }
}
