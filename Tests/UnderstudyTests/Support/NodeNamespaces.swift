import Foundation
import Glibc
import UnderstudyPosix

/// Where a fixture process runs: its address, and the command that puts it in its network
/// namespace (empty on the test's own loopback).
struct Placement: Sendable {
    let host: String
    let launcher: [String]

    static let loopback = Placement(host: "127.0.0.1", launcher: [])
}

/// Two nodes in network namespaces the test creates, joined by a bridge in a third, with a
/// veth into the test's own namespace so the test (and a tap it runs) reach both nodes.
/// Cutting a node's bridge port is a real partition: packets vanish, no FIN, no RST, which
/// is what a dead switch port or a crashed node looks like to its peers.
///
/// Names and the subnet come from the pid, so parallel runs on one machine do not collide.
/// Needs root (CI runs as root); without it the constructor throws saying so.
final class NodeNamespaces: @unchecked Sendable {
    let a: Placement
    let b: Placement
    private let prefix: String
    private let ip: String
    private var torn = false

    init() throws {
        guard getuid() == 0 else { throw TestFailure("network namespaces need root (CI runs the tests as root)") }
        guard let ip = Paths.which("ip") else { throw TestFailure("ip is not installed (apt-get install iproute2)") }
        self.ip = ip
        let pid = Int(getpid())
        prefix = "ud\(pid)"
        let subnet = "10.\(241 + (pid >> 8) % 10).\(pid % 256)"
        a = Placement(host: "\(subnet).1", launcher: [ip, "netns", "exec", prefix + "a"])
        b = Placement(host: "\(subnet).2", launcher: [ip, "netns", "exec", prefix + "b"])
        tearDown()  // leftovers of a crashed run with the same pid
        torn = false
        do {
            try run("netns", "add", prefix + "n")
            try run("-n", prefix + "n", "link", "add", "br0", "type", "bridge")
            try run("-n", prefix + "n", "link", "set", "br0", "up")
            for (node, host) in [("a", a.host), ("b", b.host)] {
                let ns = prefix + node
                try run("netns", "add", ns)
                try run("-n", prefix + "n", "link", "add", "p" + node, "type", "veth", "peer", "name", "eth0", "netns", ns)
                try run("-n", prefix + "n", "link", "set", "p" + node, "master", "br0", "up")
                try run("-n", ns, "addr", "add", host + "/24", "dev", "eth0")
                try run("-n", ns, "link", "set", "eth0", "up")
                try run("-n", ns, "link", "set", "lo", "up")
            }
            try run("-n", prefix + "n", "link", "add", "pr", "type", "veth", "peer", "name", prefix + "r", "netns", String(pid))
            try run("-n", prefix + "n", "link", "set", "pr", "master", "br0", "up")
            try run("addr", "add", "\(subnet).100/24", "dev", prefix + "r")
            try run("link", "set", prefix + "r", "up")
        } catch {
            tearDown()
            throw error
        }
    }

    /// Cuts node "a" or "b" off the bridge: from the other node and from the test.
    func cut(_ node: String) throws { try run("-n", prefix + "n", "link", "set", "p" + node, "down") }
    func heal(_ node: String) throws { try run("-n", prefix + "n", "link", "set", "p" + node, "up") }

    /// Deletes the namespaces (and with them every veth). Processes inside must be stopped
    /// first, by their owners, by pid.
    func tearDown() {
        guard !torn else { return }
        torn = true
        for ns in ["n", "a", "b"] { _ = try? Subprocess.run(ip, ["netns", "del", prefix + ns], timeoutMs: 10_000) }
        _ = try? Subprocess.run(ip, ["link", "del", prefix + "r"], timeoutMs: 10_000)
    }

    private func run(_ args: String...) throws {
        _ = try runTool(ip, args, timeout: 10)
    }

    deinit { tearDown() }
}
