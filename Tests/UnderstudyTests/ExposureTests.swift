import Foundation
import Glibc
import Testing
import UnderstudyCore
import UnderstudyPosix

/// Closed doors (Invariant 8). Each test fails if its protection is removed: the control
/// socket's mode and its SO_PEERCRED check, and loopback-only binding by default.
@Suite("exposure: control socket and listening addresses", .serialized)
struct ExposureTests {
    static let notRoot: String? = getuid() == 0 && Paths.which("setpriv") != nil
        ? nil : "needs root and setpriv to act as another user (uid 65534)"

    /// Runs a tiny control client as `nobody`; returns what it got (or the error it hit).
    static func asNobody(_ socketPath: String) throws -> String {
        let client = """
            import socket, sys
            s = socket.socket(socket.AF_UNIX)
            try:
                s.connect(sys.argv[1])
            except OSError as e:
                print("error:", e.strerror)
                sys.exit(0)
            try:
                s.sendall(b"status\\n")
            except OSError:
                pass  # a refusing server may answer and close before reading
            print("reply:", s.recv(4096).decode(errors="replace").strip())
            """
        return try runTool("/usr/bin/setpriv", ["--reuid=65534", "--regid=65534", "--clear-groups",
                                                "/usr/bin/python3", "-c", client, socketPath], timeout: 30)
    }

    @Test(.enabled(if: notRoot == nil, "\(notRoot ?? "")"))
    func controlSocketRefusesOtherUsers() throws {
        let h = try TapHarness()
        defer { h.stop() }
        let path = h.node.config.control
        // The directory is world-searchable here, so only the socket's own mode stops nobody.
        chmod(Files.directory(of: path), 0o755)
        let denied = try Self.asNobody(path)
        #expect(denied.contains("error: Permission denied"), "mode 0600 must refuse other users: \(denied)")
        // Belt and braces: even a socket whose mode was loosened refuses a foreign uid.
        chmod(path, 0o777)
        let refused = try Self.asNobody(path)
        #expect(refused.contains("reply: ERR permission denied"), "SO_PEERCRED must refuse uid 65534: \(refused)")
        #expect(!refused.contains("\"role\""), "no status leaked: \(refused)")
        // And the owner still gets its status.
        let mine = try runTool(Paths.understudy, ["status", "--control", path])
        #expect(mine.contains("role:active"))
    }

    @Test func defaultsBindOnlyLoopback() throws {
        let c = Config()
        let allLoopback = c.listen.allSatisfy { $0.isLoopback }
        #expect(allLoopback, "default journal port: \(c.listen)")
        #expect(c.metrics == nil, "metrics are off unless asked for")
        var w = Config()
        w.role = .active
        try w.set("secret-file", "/dev/null")
        try w.set("listen", "0.0.0.0:11311")
        #expect(throws: Config.Error.self, "a wildcard needs allow-wildcard even with a secret") { try w.validate() }
        try w.set("allow-wildcard", "true")
        try w.validate()
    }

    /// A running daemon's listening TCP sockets, read from /proc: all on 127.0.0.1.
    @Test func aRunningDaemonListensOnlyOnLoopback() throws {
        let mc = try MemcachedServer()
        defer { mc.stop() }
        let dir = Paths.tempDir("exposure")
        let d = try ChildProcess(Paths.understudy, ["serve", "--role", "active", "--memcached", mc.address,
                                                    "--listen", "127.0.0.1:\(Ports.free())", "--metrics", "127.0.0.1:\(Ports.free())",
                                                    "--control", dir + "/c.sock", "--state-dir", dir + "/state", "--on-local-failure", "none"],
                                 name: "serve", logDir: dir)
        defer { d.stop() }
        try d.waitForLog("ready")
        let listening = Self.listeningAddresses(pid: d.pid)
        #expect(listening.count >= 2, "journal and metrics ports must be found: \(listening)")
        #expect(listening.allSatisfy { $0 == "0100007F" }, "listening on: \(listening)")
    }

    /// Local addresses (hex, as /proc/net/tcp prints them) of `pid`'s listening sockets.
    static func listeningAddresses(pid: Int32) -> [String] {
        let fdDir = "/proc/\(pid)/fd"
        let inodes = Set(((try? FileManager.default.contentsOfDirectory(atPath: fdDir)) ?? []).compactMap { fd -> String? in
            guard let target = try? FileManager.default.destinationOfSymbolicLink(atPath: "\(fdDir)/\(fd)"),
                  target.hasPrefix("socket:[") else { return nil }
            return String(target.dropFirst(8).dropLast())
        })
        var out: [String] = []
        for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
            let text = (try? String(contentsOfFile: table, encoding: .utf8)) ?? ""
            for line in text.split(separator: "\n").dropFirst() {
                let f = line.split(separator: " ")
                guard f.count > 9, f[3] == "0A", inodes.contains(String(f[9])) else { continue }
                out.append(String(f[1].split(separator: ":")[0]))
            }
        }
        return out
    }
}
