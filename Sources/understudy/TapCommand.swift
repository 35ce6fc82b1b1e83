import Glibc
import JournalWire
import UnderstudyPosix
import WriteTap

enum TapCommand {
    static let help = """
        usage: understudy tap --listen ADDR[,ADDR...] --memcached H:P --journal H:P [options]

          --listen ADDR         where applications connect (text, meta and binary protocols):
                                H:P, or an absolute path for a Unix socket; comma-separated for several
          --socket-mode MODE    octal permissions of the Unix socket (default 0700, as memcached's -a)
          --memcached H:P       the active memcached (the VIP)
          --journal H:P         the keeper's journal port (the VIP)
          --secret-file PATH    shared secret for the journal port
          --mode MODE           async (default), sync (wait for the follower, degrade on timeout)
                                or strict (wait; SERVER_ERROR if not replicated)
          --sync-timeout MS     how long sync and strict wait for the follower (default 1000)
          --buffer N            unacknowledged journal records held before reporting a gap (default 1048576)
          --threads N           event-loop threads serving clients (default: one per two cores, 1 to 4)
          --spin-us N           how long a loop polls for memcached's reply before sleeping (default 30;
                                0 sleeps at once, for an application server short of CPU)

        """

    static func run(_ args: [String]) -> Int32 {
        if args.contains("--help") { print(help, terminator: ""); return 0 }
        do {
            let o = try Options(args, valued: ["listen", "socket-mode", "memcached", "journal", "secret-file", "mode", "sync-timeout", "buffer", "threads", "spin-us"], switches: [])
            guard let listenText = o.values["listen"], let memcached = try o.endpoint("memcached"), let journal = try o.endpoint("journal") else {
                printError("understudy tap: --listen, --memcached and --journal are required\n\n" + help)
                return 64
            }
            let listen: [ListenAddress]
            do { listen = try ListenAddress.list(parsing: listenText) } catch { printError("understudy tap: --listen: \(error)"); return 64 }
            if let w = listen.first(where: \.isWildcard) {
                printError("understudy tap: refusing to listen on the wildcard address \(w); name an address"); return 64
            }
            guard let socketMode = parseMode(o.values["socket-mode"] ?? "0700") else {
                printError("understudy tap: --socket-mode must be octal permissions such as 0700, 0660 or 0666"); return 64
            }
            guard let mode = TapEmitter.Mode(rawValue: o.values["mode"] ?? "async") else {
                printError("understudy tap: --mode must be async, sync or strict"); return 64
            }
            guard let timeout = Int(o.values["sync-timeout"] ?? "1000"), timeout > 0 else {
                printError("understudy tap: --sync-timeout must be a positive number of milliseconds"); return 64
            }
            guard let buffer = Int(o.values["buffer"] ?? "1048576"), buffer > 0 else {
                printError("understudy tap: --buffer must be positive"); return 64
            }
            guard let threads = Int(o.values["threads"] ?? String(TapProxy.Options.defaultThreads)), (1...64).contains(threads) else {
                printError("understudy tap: --threads must be between 1 and 64"); return 64
            }
            guard let spin = Int(o.values["spin-us"] ?? String(TapProxy.Options.defaultReplySpinMicros)), (0...1000).contains(spin) else {
                printError("understudy tap: --spin-us must be between 0 and 1000 microseconds"); return 64
            }
            var secret: [UInt8] = []
            if let path = o.values["secret-file"] {
                do { secret = try Handshake.loadSecret(path: path) } catch { printError("understudy tap: \(error)"); return 1 }
            }
            let emitter = TapEmitter(.init(journal: journal, secret: secret, capacity: buffer, mode: mode, syncTimeoutMs: timeout))
            let proxy: TapProxy
            do { proxy = try TapProxy(.init(listen: listen, socketMode: socketMode, memcached: memcached, threads: threads, replySpinMicros: spin), emitter: emitter) } catch {
                printError("understudy tap: cannot listen: \(error)")
                return 1
            }
            proxy.start()
            print("understudy tap: ready (\(proxy.addresses.joined(separator: ", ")))")
            _ = Signals.waitForTermination()
            proxy.stop()
            let c = emitter.counters
            Log.info("tap", "stopped: \(c.emitted) records emitted, \(c.acked) acknowledged, \(c.gaps) gaps")
            return 0
        } catch {
            printError("understudy tap: \(error.message)")
            return 64
        }
    }

    /// Octal permission bits as `chmod` and memcached's `-a` take them ("0700", "660").
    static func parseMode(_ text: String) -> mode_t? {
        guard (1...4).contains(text.count), let v = mode_t(text, radix: 8), v <= 0o777 else { return nil }
        return v
    }
}
