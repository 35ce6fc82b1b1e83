import Glibc
import UnderstudyCore
import UnderstudyPosix

/// Subcommand dispatch. Exit codes: 0 ok, 1 failure (or differences for verify), 64 usage.
enum CLI {
    static let version = "0.1.0"

    static let commands: [(String, String)] = [
        ("serve", "run the daemon (journal keeper when active, follower when passive)"),
        ("tap", "run the write-tap proxy in front of memcached"),
        ("status", "show a daemon's role, epoch, offsets, lag and counters"),
        ("promote", "make this node the active one (heartbeat 'start')"),
        ("demote", "make this node passive and follow the peer (heartbeat 'stop')"),
        ("resync", "force a full sync on a follower"),
        ("verify", "compare every key of two memcacheds; exit 1 on any difference"),
        ("demo", "run a pair on loopback: replicate, verify, fail over (needs memcached)"),
    ]

    static func usage() -> String {
        var s = "understudy \(version): a hot standby for memcached\n\nusage: understudy <command> [options]\n\ncommands:\n"
        for (c, h) in commands { s += "  \(c.padding(9))\(h)\n" }
        s += "\n`understudy <command> --help` describes a command's options.\n"
        return s
    }

    static func run(_ args: [String]) -> Int32 {
        guard let cmd = args.first else {
            print(usage(), terminator: "")
            return 64
        }
        let rest = Array(args.dropFirst())
        switch cmd {
        case "--help", "-h", "help": print(usage(), terminator: ""); return 0
        case "--version", "version": print("understudy \(version)"); return 0
        case "serve": return ServeCommand.run(rest)
        case "tap": return TapCommand.run(rest)
        case "status", "promote", "demote", "resync": return ControlCommand.run(cmd, rest)
        case "verify": return VerifyCommand.run(rest)
        case "demo": return DemoCommand.run(rest)
        default:
            printError("unknown command '\(cmd)'\n\n" + usage())
            return 64
        }
    }
}

func printError(_ s: String) {
    let bytes = Array((s.hasSuffix("\n") ? s : s + "\n").utf8)
    bytes.withUnsafeBytes { raw in _ = write(2, raw.baseAddress, raw.count) }
}

extension String {
    func padding(_ n: Int) -> String { self + String(repeating: " ", count: max(1, n - count)) }
}

/// `--name value` / `--name=value` options for the small subcommands.
struct Options {
    var values: [String: String] = [:]
    var flags: Set<String> = []

    struct Error: Swift.Error { let message: String }

    init(_ args: [String], valued: Set<String>, switches: Set<String>) throws(Error) {
        var i = 0
        while i < args.count {
            var a = args[i]
            guard a.hasPrefix("--") else { throw Error(message: "unexpected argument '\(a)'") }
            a.removeFirst(2)
            if let eq = a.firstIndex(of: "=") {
                let name = String(a[..<eq])
                guard valued.contains(name) else { throw Error(message: "unknown option --\(name)") }
                values[name] = String(a[a.index(after: eq)...])
            } else if switches.contains(a) {
                flags.insert(a)
            } else if valued.contains(a) {
                guard i + 1 < args.count else { throw Error(message: "--\(a) needs a value") }
                i += 1
                values[a] = args[i]
            } else {
                throw Error(message: "unknown option --\(a)")
            }
            i += 1
        }
    }

    func endpoint(_ name: String) throws(Error) -> Endpoint? {
        guard let v = values[name] else { return nil }
        do { return try Endpoint(parsing: v) } catch { throw Error(message: "--\(name): \(error)") }
    }
}
