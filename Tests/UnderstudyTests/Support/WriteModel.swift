import Foundation
import MemcacheClient
import UnderstudyPosix

/// Every write a drill's workload attempted, and what the client was told. The model decides
/// what a node may legally hold for each key afterwards: the last acknowledged write, or any
/// write attempted after it whose answer never came (it may or may not have been applied).
final class WriteModel: @unchecked Sendable {
    struct Op {
        /// nil for a delete.
        let value: [UInt8]?
        var acked: Bool
        /// Monotonic ms when the client got the acknowledgement.
        var ackedAtMs: Int64
    }

    private let lock = NSLock()
    private var ops: [String: [Op]] = [:]
    private(set) var acked = 0
    private(set) var failed = 0
    /// Acked writes the tap journals: all but deletes of missing keys (memcached's NOT_FOUND
    /// changes nothing, so no record names it).
    private(set) var journaled = 0

    func record(_ key: String, _ value: [UInt8]?, acked ok: Bool, changed: Bool = true) {
        lock.withLock {
            ops[key, default: []].append(Op(value: value, acked: ok, ackedAtMs: ok ? Clock.monotonicMs() : 0))
            if ok { acked += 1 } else { failed += 1 }
            if ok && changed { journaled += 1 }
        }
    }

    struct Loss {
        let key: String
        /// When the lost write was acknowledged (monotonic ms).
        let ackedAtMs: Int64
    }

    /// Keys whose state on `endpoint` no acknowledged history allows.
    func losses(on endpoint: Endpoint) throws -> [Loss] {
        let snapshot = lock.withLock { ops }
        let c = try MemcacheConnection(endpoint, ioTimeoutMs: 10_000)
        defer { c.close() }
        var lost: [Loss] = []
        for (key, history) in snapshot {
            let got = try c.get(Array(key.utf8))?.value
            let lastAck = history.lastIndex { $0.acked }
            let allowed = history[(lastAck ?? 0)...].map(\.value) + (lastAck == nil ? [nil] : [])
            if !allowed.contains(where: { $0 == got }) {
                lost.append(Loss(key: key, ackedAtMs: lastAck.map { history[$0].ackedAtMs } ?? 0))
            }
        }
        return lost
    }
}

/// A client writing through the tap until told to stop, recording every answer in a model.
/// Bounded: at most `maxOps` writes and `maxSeconds` of wall time, whatever happens.
final class Workload: @unchecked Sendable {
    let model = WriteModel()
    private let stopFlag = Monitor(false)
    private let thread: Thread

    init(tap: Endpoint, keys: Int = 400, maxOps: Int = 200_000, maxSeconds: Double = 60, seed: UInt64) {
        let model = self.model
        let stopFlag = self.stopFlag
        thread = Thread {
            var rng = SeededRandom(seed)
            let deadline = Date().addingTimeInterval(maxSeconds)
            var conn: MemcacheConnection?
            for seq in 0..<maxOps {
                if stopFlag.withLock({ $0 }) || Date() > deadline { break }
                if conn == nil {
                    conn = try? MemcacheConnection(tap, connectTimeoutMs: 500, ioTimeoutMs: 5000)
                    if conn == nil { usleep(20_000); continue }
                }
                let key = "drill-\(rng.next() % UInt64(keys))"
                let delete = rng.next() % 10 == 0
                let value: [UInt8]? = delete ? nil : Array("v\(seq)-".utf8) + [UInt8](repeating: 0x61, count: Int(rng.next() % 200))
                do {
                    if let value {
                        model.record(key, value, acked: try conn!.set(Array(key.utf8), value) == .stored)
                    } else {
                        let deleted = try conn!.delete(Array(key.utf8))
                        model.record(key, nil, acked: true, changed: deleted)
                    }
                } catch {
                    model.record(key, value, acked: false)
                    conn?.close()
                    conn = nil
                }
            }
            conn?.close()
        }
        thread.start()
    }

    /// Stops the writer and waits for it (bounded by its own deadline).
    func stop() {
        stopFlag.update { $0 = true }
        while !thread.isFinished { usleep(10_000) }
    }
}
