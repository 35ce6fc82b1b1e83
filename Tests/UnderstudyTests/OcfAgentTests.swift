import Foundation
import Testing
import UnderstudyPosix

/// The Pacemaker agent (heartbeat/understudy-ocf) against a real daemon and memcached:
/// ocf-tester's whole suite, then the promoted-instance failure the agent must report.
@Suite("OCF resource agent", .serialized)
struct OcfAgentTests {
    static let agent = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .appendingPathComponent("../../heartbeat/understudy-ocf").standardized.path
    static let tester = "/usr/sbin/ocf-tester"

    struct Setup {
        let memcached: MemcachedServer
        let dir: String
        let params: [String: String]

        init() throws {
            memcached = try MemcachedServer()
            dir = Paths.tempDir("ocf")
            // ocf-tester runs one check as `nobody`: the directory must be readable.
            chmod(dir, 0o755)
            let config = dir + "/understudy.conf"
            try """
                memcached = \(memcached.address)
                listen = 127.0.0.1:\(Ports.free())
                peer = 127.0.0.1:\(Ports.free())
                peer-memcached = 127.0.0.1:\(Ports.free())
                state-dir = \(dir)/state
                on-active-failure = none
                on-local-failure = none
                """.write(toFile: config, atomically: true, encoding: .utf8)
            params = ["binary": Paths.understudy, "config": config, "control": dir + "/control.sock",
                      "pidfile": dir + "/understudy.pid", "logfile": dir + "/understudy.log"]
        }

        /// Runs one agent action the way Pacemaker does; returns its exit code.
        func action(_ name: String) throws -> Int32 {
            var env = ["OCF_ROOT": "/usr/lib/ocf", "OCF_RESOURCE_INSTANCE": "us-test", "HA_RSCTMP": dir,
                       "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"]
            for (k, v) in params { env["OCF_RESKEY_\(k)"] = v }
            let r = try Subprocess.run("/bin/sh", [OcfAgentTests.agent, name], environment: env, timeoutMs: 60_000)
            if r.timedOut { throw TestFailure("agent \(name) timed out:\n\(r.output)") }
            return r.exit.code
        }
    }

    static let available: String? = FileManager.default.isExecutableFile(atPath: tester) &&
        FileManager.default.fileExists(atPath: "/usr/lib/ocf/lib/heartbeat/ocf-shellfuncs")
        ? nil : "ocf-tester not installed (apt-get install resource-agents)"

    @Test(.enabled(if: available == nil, "\(available ?? "")"))
    func passesOcfTester() throws {
        let s = try Setup()
        defer { _ = try? s.action("stop") }
        var args = ["-n", "understudy-test"]
        for (k, v) in s.params.sorted(by: { $0.key < $1.key }) { args += ["-o", "\(k)=\(v)"] }
        let out = try runTool(Self.tester, args + [Self.agent], timeout: 240)
        #expect(out.contains("passed all tests"), "ocf-tester:\n\(out)")
    }

    @Test(.enabled(if: available == nil, "\(available ?? "")"))
    func monitorReportsRolesAndAFailedPromotedInstance() throws {
        let s = try Setup()
        defer { _ = try? s.action("stop") }
        #expect(try s.action("monitor") == 7, "not running")
        #expect(try s.action("start") == 0)
        #expect(try s.action("monitor") == 0, "started = unpromoted")
        #expect(try s.action("promote") == 0)
        #expect(try s.action("promote") == 0, "idempotent")
        #expect(try s.action("monitor") == 8, "promoted")
        s.memcached.kill9()
        #expect(try s.action("monitor") == 9, "promoted but the local memcached is down")
        #expect(try s.action("demote") == 0)
        #expect(try s.action("stop") == 0)
        #expect(try s.action("stop") == 0, "stop is idempotent")
        #expect(try s.action("monitor") == 7)
        #expect(try s.action("validate-all") == 0)
    }
}
