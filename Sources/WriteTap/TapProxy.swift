import JournalWire
import MemcacheClient
import MemcacheProtocol
import Synchronization
import UnderstudyPosix

/// `understudy tap`: a local memcached proxy that journals every acknowledged mutation.
///
/// Clients connect here instead of to memcached; each gets a thread and an upstream
/// connection. The first byte picks the protocol the way memcached does: 0x80 is binary,
/// anything else text (classic and meta).
public final class TapProxy: Sendable {
    public struct Options: Sendable {
        public var listen: Endpoint
        public var memcached: Endpoint
        /// Values larger than this are refused locally; nil asks memcached (`item_size_max`).
        public var maxItemSize: Int?

        public init(listen: Endpoint, memcached: Endpoint, maxItemSize: Int? = nil) {
            self.listen = listen
            self.memcached = memcached
            self.maxItemSize = maxItemSize
        }
    }

    public struct Stats: Sendable {
        public var connections: Int
        public var activeSessions: Int
    }

    public let options: Options
    public let emitter: TapEmitter
    let pool: UpstreamPool
    let listener: Listener
    let itemSizeMax: Int
    let sessions = Atomic<Int>(0)
    let accepted = Atomic<Int>(0)
    let openClients = Monitor<[Int32: Socket]>([:])

    public init(_ options: Options, emitter: TapEmitter) throws(SystemError) {
        self.options = options
        self.emitter = emitter
        self.pool = UpstreamPool(endpoint: options.memcached)
        self.listener = try Listener.tcp(options.listen)
        self.itemSizeMax = options.maxItemSize ?? Self.probeItemSizeMax(options.memcached)
    }

    public var port: UInt16 { listener.port }
    public var stats: Stats { Stats(connections: accepted.load(ordering: .relaxed), activeSessions: sessions.load(ordering: .relaxed)) }

    /// memcached's `item_size_max`, or its 1 MiB default if the server is not up yet.
    static func probeItemSizeMax(_ endpoint: Endpoint) -> Int {
        guard let c = try? MemcacheConnection(endpoint, connectTimeoutMs: 500, ioTimeoutMs: 1000) else { return 1 << 20 }
        defer { c.close() }
        return (try? c.stats("settings"))?["item_size_max"].flatMap { Int($0) } ?? 1 << 20
    }

    public func start() {
        Threads.start("tap-accept") { [self] in acceptLoop() }
        Log.info("tap", "listening on \(options.listen) (port \(port)), memcached \(options.memcached), journal \(emitter.options.journal), mode \(emitter.mode.rawValue)")
    }

    public func stop() {
        listener.close()
        for s in openClients.withLock({ Array($0.values) }) { s.shutdown() }
        pool.drainIdle()
        emitter.stop()
    }

    func acceptLoop() {
        listener.serve("tap") { [self] client in
            accepted.add(1, ordering: .relaxed)
            sessions.add(1, ordering: .relaxed)
            openClients.withLock { $0[client.fd] = client }
            defer {
                sessions.subtract(1, ordering: .relaxed)
                openClients.withLock { _ = $0.removeValue(forKey: client.fd) }
                client.close()
            }
            serve(client)
        }
    }

    func serve(_ client: Socket) {
        let stream = ByteStream(client, capacity: 64 * 1024)
        let first: UInt8?
        do { first = try stream.peekByte() } catch { return }
        guard let first else { return }
        if first == BinaryPacket.requestMagic {
            BinarySession(proxy: self, client: stream).run()
        } else {
            TextSession(proxy: self, client: stream).run()
        }
    }
}
