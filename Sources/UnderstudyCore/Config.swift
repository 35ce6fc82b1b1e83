import UnderstudyPosix

/// `understudy serve` settings. Every key works as a flag (`--peer H:P`) and as a line of the
/// `--config` file (`peer = H:P`); flags win over the file. The names are DESIGN.md §7's.
public struct Config: Sendable {
    public enum Role: String, Sendable { case active, passive }

    public var memcached = try! Endpoint(parsing: "127.0.0.1:11211")
    /// Journal port addresses: the node's own (for the peer) and usually the VIP (for taps).
    /// The VIP may be absent until heartbeat moves it here; it is bound with IP_FREEBIND.
    public var listen = [try! Endpoint(parsing: "127.0.0.1:11311")]
    public var peer: Endpoint?
    public var peerMemcached: Endpoint?
    public var control = "/run/understudy/control.sock"
    public var metrics: Endpoint?
    public var secretFile: String?
    public var stateDir = "/var/lib/understudy"
    public var role = Role.passive
    /// Backlog bound in bytes (default 64 MiB ≈ 600 k records of 30-byte keys).
    public var backlogSize = 64 << 20
    public var batchSize = 1000
    /// Seconds between passes that mark on the passive the keys the application reads on
    /// the active (`LRUWarmer`); 0: never.
    public var lruSyncInterval = 60
    public var logLevel = Log.Level.info
    /// Bind the journal port to a wildcard address even so (never implied).
    public var allowWildcard = false
    /// Memcached health probes: one every `probeInterval` ms; `probeFailures` in a row
    /// (so within probeFailures × probeInterval) run the hook.
    public var probeInterval = 500
    public var probeFailures = 4
    public var hookTimeout = 10_000
    /// Passive: the active memcached stopped answering (heartbeat v1 does not monitor it).
    public var onActiveFailure = "/usr/share/heartbeat/hb_takeover"
    /// Active: the local memcached stopped answering; run only if the follower is in sync.
    public var onLocalFailure = "/usr/share/heartbeat/hb_standby"

    public init() {}

    public struct Error: Swift.Error, CustomStringConvertible {
        public let message: String
        public var description: String { message }
        init(_ m: String) { message = m }
    }

    /// Every key, with the help text `understudy serve --help` prints.
    public static let keys: [(String, String)] = [
        ("memcached", "H:P of the local memcached (default 127.0.0.1:11211)"),
        ("listen", "H:P[,H:P...] of the journal port: the node's address for the peer, the VIP for taps (default 127.0.0.1:11311)"),
        ("peer", "H:P of the peer daemon's journal port"),
        ("peer-memcached", "H:P of the peer's memcached (the active one, when passive)"),
        ("control", "path of the control Unix socket, mode 0600 (default /run/understudy/control.sock)"),
        ("metrics", "H:P for Prometheus metrics over HTTP (off by default)"),
        ("secret-file", "shared secret for the journal port; required to bind a non-loopback address"),
        ("state-dir", "directory for the epoch and replication position (default /var/lib/understudy)"),
        ("role", "active|passive at start (default passive; heartbeat decides after that)"),
        ("backlog-size", "journal backlog bound in bytes, K/M/G suffixes (default 64M)"),
        ("batch-size", "keys per pipelined copy batch (default 1000)"),
        ("lru-sync-interval", "seconds between passes marking on the passive what the app reads on the active (default 60; 0 off)"),
        ("log-level", "debug|info|warning|error (default info)"),
        ("allow-wildcard", "true to allow binding the journal port to 0.0.0.0 or ::"),
        ("probe-interval", "milliseconds between memcached health probes (default 500)"),
        ("probe-failures", "failed probes in a row that count as down (default 4)"),
        ("hook-timeout", "milliseconds a failure hook may run before it is killed (default 10000)"),
        ("on-active-failure", "passive: command run when the active memcached is down on a host that answers (default hb_takeover; an unreachable host is left to the cluster manager); 'none' disables"),
        ("on-local-failure", "active: command run when the local memcached is down and the peer is in sync (default hb_standby); 'none' disables"),
    ]

    /// Parses `serve` arguments, reading `--config FILE` first if given.
    public static func parse(_ args: [String]) throws(Error) -> Config {
        var pairs: [(String, String)] = []
        var i = 0
        var file: String?
        while i < args.count {
            let a = args[i]
            guard a.hasPrefix("--") else { throw Error("unexpected argument '\(a)'") }
            var name = String(a.dropFirst(2))
            var value: String
            if let eq = name.firstIndex(of: "=") {
                value = String(name[name.index(after: eq)...])
                name = String(name[..<eq])
            } else {
                guard i + 1 < args.count else { throw Error("--\(name) needs a value") }
                i += 1
                value = args[i]
            }
            if name == "config" { file = value } else { pairs.append((name, value)) }
            i += 1
        }
        var c = Config()
        if let file {
            let bytes: [UInt8]
            do { bytes = try Files.read(file) } catch { throw Error("cannot read config file: \(error)") }
            for (name, value) in try parseFile(String(decoding: bytes, as: UTF8.self), path: file) { try c.set(name, value) }
        }
        for (name, value) in pairs { try c.set(name, value) }
        return c
    }

    /// `key = value` or `key value` per line; `#` starts a comment.
    public static func parseFile(_ text: String, path: String) throws(Error) -> [(String, String)] {
        var out: [(String, String)] = []
        for (n, raw) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            var line = Substring(raw)
            if let hash = line.firstIndex(of: "#") { line = line[..<hash] }
            let trimmed = line.trimmingCharacters(in: " \t\r")
            if trimmed.isEmpty { continue }
            let parts: [Substring]
            if let eq = trimmed.firstIndex(of: "=") {
                parts = [trimmed[..<eq], trimmed[trimmed.index(after: eq)...]]
            } else {
                parts = trimmed.split(separator: " ", maxSplits: 1)
            }
            guard parts.count == 2 else { throw Error("\(path):\(n + 1): expected 'key = value'") }
            let key = parts[0].trimmingCharacters(in: " \t")
            let value = parts[1].trimmingCharacters(in: " \t")
            guard !key.isEmpty, !value.isEmpty else { throw Error("\(path):\(n + 1): expected 'key = value'") }
            out.append((String(key), String(value)))
        }
        return out
    }

    public mutating func set(_ name: String, _ value: String) throws(Error) {
        func endpoint() throws(Error) -> Endpoint {
            do { return try Endpoint(parsing: value) } catch { throw Error("--\(name): \(error)") }
        }
        switch name {
        case "memcached": memcached = try endpoint()
        case "listen":
            var list: [Endpoint] = []
            for part in value.split(separator: ",") {
                do { list.append(try Endpoint(parsing: String(part).trimmingCharacters(in: " ").description)) } catch {
                    throw Error("--listen: \(error)")
                }
            }
            guard !list.isEmpty else { throw Error("--listen needs at least one H:P") }
            listen = list
        case "peer": peer = try endpoint()
        case "peer-memcached": peerMemcached = try endpoint()
        case "control": control = value
        case "metrics": metrics = try endpoint()
        case "secret-file": secretFile = value
        case "state-dir": stateDir = value
        case "role":
            guard let r = Role(rawValue: value) else { throw Error("--role must be active or passive, not '\(value)'") }
            role = r
        case "backlog-size":
            guard let n = Self.size(value), n >= 1024 else { throw Error("--backlog-size: '\(value)' is not a size of at least 1K") }
            backlogSize = n
        case "batch-size":
            guard let n = Int(value), n > 0, n <= 100_000 else { throw Error("--batch-size must be 1...100000") }
            batchSize = n
        case "lru-sync-interval":
            guard let n = Int(value), n >= 0, n <= 86_400 else { throw Error("--lru-sync-interval must be 0...86400 seconds") }
            lruSyncInterval = n
        case "log-level":
            let levels: [String: Log.Level] = ["debug": .debug, "info": .info, "warning": .warning, "error": .error]
            guard let l = levels[value] else { throw Error("--log-level must be debug, info, warning or error") }
            logLevel = l
        case "allow-wildcard":
            guard let b = Bool(value) else { throw Error("--allow-wildcard must be true or false") }
            allowWildcard = b
        case "probe-interval", "probe-failures", "hook-timeout":
            guard let n = Int(value), n > 0, n <= 3_600_000 else { throw Error("--\(name) must be a positive number") }
            if name == "probe-interval" { probeInterval = n } else if name == "probe-failures" { probeFailures = n } else { hookTimeout = n }
        case "on-active-failure": onActiveFailure = value
        case "on-local-failure": onLocalFailure = value
        default:
            throw Error("unknown setting '\(name)' (see understudy serve --help)")
        }
    }

    static func size(_ s: String) -> Int? {
        let units: [Character: Int] = ["K": 1 << 10, "k": 1 << 10, "M": 1 << 20, "m": 1 << 20, "G": 1 << 30, "g": 1 << 30]
        if let last = s.last, let mult = units[last] { return Int(s.dropLast()).map { $0 * mult } }
        return Int(s)
    }

    /// Start-up checks that protect the operator (DESIGN §3 Invariant 8, §7 protected mode).
    public func validate() throws(Error) {
        for l in listen {
            if l.isWildcard && !allowWildcard {
                throw Error("refusing to bind the journal port to the wildcard address \(l); name an interface address, or pass --allow-wildcard true")
            }
            if secretFile == nil && !l.isLoopback {
                throw Error("refusing to listen on non-loopback \(l) without --secret-file: taps and peers must authenticate")
            }
        }
        if role == .passive && (peer == nil || peerMemcached == nil) {
            throw Error("passive role needs --peer (the keeper's journal port) and --peer-memcached (the active memcached)")
        }
    }
}

extension StringProtocol {
    func trimmingCharacters(in set: String) -> Substring {
        var s = Substring(self)
        while let f = s.first, set.contains(f) { s = s.dropFirst() }
        while let l = s.last, set.contains(l) { s = s.dropLast() }
        return s
    }
}
