import Foundation
import JournalWire
import MemcacheClient
import MemcacheProtocol
import Synchronization
import UnderstudyPosix

/// `understudy tap`: a local memcached proxy that journals every acknowledged mutation.
///
/// Clients are spread over a few event loops (`TapLoop`); each loop shares one connection
/// to memcached per dialect among its clients (`Upstream`). The first byte picks the
/// protocol the way memcached does: 0x80 is binary, anything else text (classic and meta).
public final class TapProxy: Sendable {
    public struct Options: Sendable {
        /// Where applications connect: TCP addresses and Unix socket paths, any mix.
        public var listen: [ListenAddress]
        /// The permissions of the Unix socket files: 0700 by default, as memcached's `-a`.
        /// An application running as another user needs 0660 and a shared group, or 0666.
        public var socketMode: mode_t
        public var memcached: Endpoint
        /// Values larger than this are refused locally; nil asks memcached (`item_size_max`).
        public var maxItemSize: Int?
        /// Event-loop threads. One per two cores (at least 1, at most 4) by default: the tap
        /// shares its machine with the application, and a loop that finds several clients
        /// ready handles them in one wake-up where two loops each wake for one. Measured on
        /// 2 cores (`understudy-bench tap`, 3 runs): one loop spent 13 µs of CPU per get at 4
        /// connections against 18 µs with two, 16 against 23 per set, 7.7 against 9.5 per get
        /// at 32, with equal or higher throughput.
        public var threads: Int
        /// How long a loop polls for a reply memcached owes it before it sleeps (µs; 0:
        /// sleep at once). See `ReplySpin`: a spin costs the tap's CPU what it saves in
        /// wake-ups, so a machine short of CPU for the application may turn it off.
        public var replySpinMicros: Int

        public static let defaultThreads = min(max(ProcessInfo.processInfo.activeProcessorCount / 2, 1), 4)
        public static let defaultReplySpinMicros = 30

        public init(listen: [ListenAddress], socketMode: mode_t = 0o700, memcached: Endpoint, maxItemSize: Int? = nil,
                    threads: Int = Options.defaultThreads, replySpinMicros: Int = Options.defaultReplySpinMicros) {
            self.listen = listen
            self.socketMode = socketMode
            self.memcached = memcached
            self.maxItemSize = maxItemSize
            self.threads = max(1, threads)
            self.replySpinMicros = max(0, replySpinMicros)
        }
    }

    public struct Stats: Sendable {
        public var connections: Int
        public var activeSessions: Int
    }

    public let options: Options
    public var emitter: TapEmitter { context.emitter }
    let context: TapContext
    let listeners: [Listener]
    private let loops: [TapLoop]
    private let accepted = Atomic<Int>(0)

    public init(_ options: Options, emitter: TapEmitter) throws(SystemError) {
        self.options = options
        let context = TapContext(emitter: emitter, memcached: options.memcached,
                                 itemSizeMax: options.maxItemSize ?? Self.probeItemSizeMax(options.memcached))
        self.context = context
        var made: [TapLoop] = []
        for i in 0..<options.threads { made.append(try TapLoop(name: "tap-loop-\(i)", context: context, replySpinNanos: UInt64(options.replySpinMicros) * 1000)) }
        let loops = made
        self.loops = loops
        // Bound last, so that nothing after can fail and leave a socket file behind.
        var bound: [Listener] = []
        do {
            for a in options.listen { bound.append(try Listener.bind(a, unixMode: options.socketMode)) }
        } catch {
            for l in bound { l.close() }
            throw error
        }
        self.listeners = bound
        emitter.onSyncProgress { for l in loops { l.poller.wake() } }
    }

    /// The port of the first TCP address (the one the kernel chose, if it was asked for 0).
    public var port: UInt16 { listeners.first { !$0.isUnix }?.port ?? 0 }
    /// What the tap listens on, ports as bound: for logs and the ready line.
    public var addresses: [String] { listeners.map { $0.isUnix ? $0.name : "\($0.name) (port \($0.port))" } }
    public var stats: Stats { Stats(connections: accepted.load(ordering: .relaxed), activeSessions: context.sessions.load(ordering: .relaxed)) }

    /// memcached's `item_size_max`, or its 1 MiB default if the server is not up yet.
    static func probeItemSizeMax(_ endpoint: Endpoint) -> Int {
        guard let c = try? MemcacheConnection(endpoint, connectTimeoutMs: 500, ioTimeoutMs: 1000) else { return 1 << 20 }
        defer { c.close() }
        return (try? c.stats("settings"))?["item_size_max"].flatMap { Int($0) } ?? 1 << 20
    }

    public func start() {
        for l in loops { l.start() }
        for listener in listeners {
            Threads.start("tap-accept") { [self] in
                listener.acceptEach("tap") { client in
                    let n = accepted.wrappingAdd(1, ordering: .relaxed).newValue
                    context.sessions.add(1, ordering: .relaxed)
                    loops[n % loops.count].adopt(client)
                }
            }
        }
        Log.info("tap", "listening on \(addresses.joined(separator: ", ")), memcached \(options.memcached), journal \(emitter.options.journal), mode \(emitter.mode.rawValue), \(loops.count) event loop(s)")
    }

    /// Stops accepting, finishes what clients have in flight, and gives the keeper a moment
    /// to acknowledge the last records before the emitter stops: an orderly restart of the
    /// tap loses nothing the follower would not otherwise learn of.
    public func stop() {
        for l in listeners { l.close() }
        for l in loops { l.stop() }
        if emitter.isConnected && !emitter.drain(timeoutMs: 2000) {
            Log.warning("tap", "stopping with \(emitter.lastSeq - emitter.ackedSeq) records the keeper has not acknowledged")
        }
        emitter.stop()
    }
}

/// What every connection of every loop shares.
final class TapContext: Sendable {
    let emitter: TapEmitter
    let memcached: Endpoint
    let itemSizeMax: Int
    /// How long a forwarded request may wait for memcached's next byte.
    let ioTimeoutMs = 5000
    let sessions = Atomic<Int>(0)

    init(emitter: TapEmitter, memcached: Endpoint, itemSizeMax: Int) {
        self.emitter = emitter
        self.memcached = memcached
        self.itemSizeMax = itemSizeMax
    }

    func sessionsEnded(_ n: Int) {
        sessions.subtract(n, ordering: .relaxed)
    }
}
