import Foundation
import Glibc
import Testing
import UnderstudyPosix
import WriteTap
@testable import UnderstudyCore

/// A full disk under a real node: its state dir on a 256 KiB tmpfs the test mounts and fills.
/// Neither a promotion nor a demotion may proceed on state it could not persist, and the
/// writes only this node holds must never be dropped for lack of a recovery file.
@Suite("full disk", .serialized)
struct FullDiskTests {
    /// Mounting a tmpfs needs root (CAP_SYS_ADMIN); elsewhere the test skips with this reason.
    static let unavailable: String? = {
        let probe = Paths.tempDir("tmpfs-probe")
        guard (try? runTool("/bin/mount", ["-t", "tmpfs", "-o", "size=64k", "tmpfs", probe], timeout: 10)) != nil else {
            return "cannot mount a tmpfs here (needs root)"
        }
        _ = try? runTool("/bin/umount", [probe], timeout: 10)
        return nil
    }()

    /// Fills the filesystem at `dir` until ENOSPC; returns the filler's path.
    static func fill(_ dir: String) -> String {
        let path = dir + "/filler"
        let fd = open(path, O_WRONLY | O_CREAT, 0o600)
        let chunk = [UInt8](repeating: 0, count: 4096)
        for _ in 0..<1024 where chunk.withUnsafeBytes({ write(fd, $0.baseAddress, 4096) }) == 4096 {}
        close(fd)
        return path
    }

    @Test(.enabled(if: unavailable == nil, "\(unavailable ?? "")"))
    func demotionAndPromotionRefuseToProceedOnAFullDisk() throws {
        let mc = try MemcachedServer()
        defer { mc.stop() }
        let dir = Paths.tempDir("fulldisk")
        let stateDir = dir + "/statefull"
        try FileManager.default.createDirectory(atPath: stateDir, withIntermediateDirectories: true)
        try runTool("/bin/mount", ["-t", "tmpfs", "-o", "size=256k", "tmpfs", stateDir], timeout: 10)
        defer { _ = try? runTool("/bin/umount", ["-l", stateDir], timeout: 10) }
        let port = Ports.free()
        let node = try TapHarness.keeper(dir: dir, port: port, memcached: mc.address, suffix: "full")
        defer { node.stop() }
        #expect(node.status.role == "active")

        // Writes only this node holds (no follower ever applied them).
        let tap = TapEmitter(.init(journal: Endpoint(host: "127.0.0.1", port: port)))
        defer { tap.stop() }
        let client = try TappedClient(memcached: mc.endpoint, tap: tap)
        for i in 0..<20 { _ = try client.set(Array("orphan\(i)".utf8), Array("v\(i)".utf8)) }
        #expect(waitUntil(10) { (node.status.keeper?.endOffset ?? 0) >= 20 })

        let filler = Self.fill(stateDir)
        guard case .failure(let why) = node.demote(reason: "test") else {
            Issue.record("demote on a full disk must fail")
            return
        }
        #expect(why.description.contains("recovery file") && why.description.contains("No space left"), "\(why)")
        #expect(node.status.role == "active", "stays active: its writes exist nowhere else")
        _ = try client.set(Array("after-refusal".utf8), Array("still journaled".utf8))
        #expect(waitUntil(10) { (node.status.keeper?.endOffset ?? 0) >= 21 }, "the keeper resumed journaling")

        // Space back: the demotion goes through and the recovery file holds every orphan.
        unlink(filler)
        guard case .success = node.demote(reason: "test, space freed") else {
            Issue.record("demote with space must succeed")
            return
        }
        let file = try #require(node.status.recoveryFile)
        let text = try String(contentsOfFile: file, encoding: .utf8)
        for i in 0..<20 { #expect(text.contains(Data("orphan\(i)".utf8).base64EncodedString()), "orphan\(i) in \(file)") }
        #expect(text.contains("\"summary\":\"complete\""))

        // A passive node that cannot persist its new epoch must not promote.
        let filler2 = Self.fill(stateDir)
        guard case .failure(let p) = node.promote(reason: "test") else {
            Issue.record("promote on a full disk must fail")
            return
        }
        #expect(p.description.contains("cannot persist epoch"), "\(p)")
        #expect(node.status.role == "passive")
        unlink(filler2)
    }

    /// The follower's saved position on a full disk: following goes on (the copy lives in
    /// memcached, not on disk), the failure is logged once rather than every second, and the
    /// position is saved again as soon as there is room.
    @Test(.enabled(if: unavailable == nil, "\(unavailable ?? "")"))
    func aFollowerKeepsFollowingOnAFullDiskAndSavesItsPositionWhenSpaceReturns() throws {
        let h = try PairHarness(startFollower: false)
        let stateDir = h.dir + "/b"
        try FileManager.default.createDirectory(atPath: stateDir, withIntermediateDirectories: true)
        try runTool("/bin/mount", ["-t", "tmpfs", "-o", "size=256k", "tmpfs", stateDir], timeout: 10)
        defer { _ = try? runTool("/bin/umount", ["-l", stateDir], timeout: 10) }
        try h.startFollower()
        func saved() -> UInt64? { FollowerPosition.load(from: stateDir)?.applied }
        try h.write(0..<2000, prefix: "fd")
        try h.waitCaughtUp()
        let applied = try #require(try h.status("b").follower?.appliedOffset)
        #expect(waitUntil(10) { saved() == applied }, "saved \(saved().map(String.init) ?? "nothing"), applied \(applied)")

        let filler = Self.fill(stateDir)
        try h.write(2000..<4000, prefix: "fd")
        try h.waitCaughtUp()
        usleep(2_500_000)  // at least two attempts to save
        #expect(saved() == applied, "nothing new could be saved")
        let (code, out) = try h.verify()
        #expect(code == 0, "still following: \(out)")
        let failures = h.follower!.log.components(separatedBy: "cannot save position").count - 1
        #expect(failures == 1, "logged once, not every second: \(failures)")

        unlink(filler)
        let now = try #require(try h.status("b").follower?.appliedOffset)
        #expect(now > applied)
        #expect(waitUntil(10) { saved() == now }, "saved \(saved().map(String.init) ?? "nothing"), applied \(now)")
        #expect(h.follower!.log.contains("position saved to \(stateDir) again"))
    }
}
