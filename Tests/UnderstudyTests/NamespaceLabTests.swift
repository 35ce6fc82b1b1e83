import Foundation
import Testing
import UnderstudyPosix

/// The two-node cluster tests: real cluster software, memcached and `understudy serve` in
/// network namespaces the labs create, a tap in sync mode in a client namespace, and a writer
/// that records every acknowledged write. The scenarios live in heartbeat/lab/; these tests run
/// them and hold them to their results. Serialized, and run by CI after everything else, so a
/// 1 s heartbeat deadtime is not judged on a machine busy with other suites.
@Suite("failover labs in network namespaces", .serialized)
struct NamespaceLabTests {
    static let heartbeat = LabScript("failover-lab.sh")
    static let heartbeatUnavailable = heartbeat.unavailable
    static let pacemaker = LabScript("pacemaker-lab.sh")
    static let pacemakerUnavailable = pacemaker.unavailable

    /// Heartbeat 3.0.6 v1: crash the active, rejoin it, partition and heal.
    @Test(.enabled(if: heartbeatUnavailable == nil, "\(heartbeatUnavailable ?? "")"))
    func heartbeatCrashRejoinPartitionHeal() throws {
        let (results, out) = try Self.heartbeat.run(label: "lab", maxSeconds: 280, timeout: 330)
        #expect(results["failures"] == "0", "lab output:\n\(out)")
        #expect(results["crash_lost"] == "0")
        #expect(Int(results["crash_acked"] ?? "0") ?? 0 > 0, "the writer must have had acknowledged writes before the crash")
        #expect(results["a_rejoins_as_passive_in_sync"] == "ok")
        #expect(results["a_copy_verifies"] == "ok")
        #expect(results["cluster_settles"] == "ok", "after the heal: one active holding the VIP, for 25 s running")
        #expect(results["exactly_one_active"] == "ok")
        #expect(results["partition_lost"] == "0")
        #expect(results["final_copy_verifies"] == "ok", "after the heal the passive's copy is the active's")
        #expect(Double(results["rto_seconds"] ?? "") != nil, "RTO must be measured")
    }

    /// Corosync 3 + Pacemaker 2.1 with the OCF agent as a promotable clone (loaded from
    /// heartbeat/understudy-cib.xml.sample): crash the promoted node, check the in-sync
    /// follower is promoted with nothing acknowledged lost, then rejoin the old node and move
    /// the promoted role back to it (a planned switchover: nothing lost, no recovery file, no
    /// full sync for the demoted node).
    @Test(.enabled(if: pacemakerUnavailable == nil, "\(pacemakerUnavailable ?? "")"))
    func pacemakerCrashThePromotedNodeAndRejoin() throws {
        let (results, out) = try Self.pacemaker.run(label: "pcmk-lab", maxSeconds: 300, timeout: 360)
        #expect(results["failures"] == "0", "lab output:\n\(out)")
        #expect(results["follower_promotion_score"] == "100", "an in-sync follower scores 100")
        #expect(results["survivor_promoted"] == "ok")
        #expect(results["vip_moved"] == "ok")
        #expect(results["crash_lost"] == "0")
        #expect(Int(results["crash_acked"] ?? "0") ?? 0 > 0, "the writer must have had acknowledged writes before the crash")
        #expect(results["old_node_rejoins_unpromoted"] == "ok")
        #expect(results["old_node_copy_verifies"] == "ok")
        #expect(Double(results["rto_seconds"] ?? "") != nil, "RTO must be measured")
        #expect(results["switchover_promoted"] == "ok")
        #expect(results["switch_lost"] == "0")
        #expect(Int(results["switch_acked"] ?? "0") ?? 0 > 0, "the writer must have had acknowledged writes around the switchover")
        #expect(results["switchover_handed_over"] == "ok")
        #expect(results["switchover_no_recovery_file"] == "ok")
        #expect(results["switchover_demoted_resumed"] == "ok", "the demoted node resumes the run the new active continues")
        #expect(results["switchover_copy_verifies"] == "ok")
    }
}
