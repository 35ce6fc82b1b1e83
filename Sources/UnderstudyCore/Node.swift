import Foundation
import JournalWire
import UnderstudyPosix

/// `understudy serve`: one node of the pair. Holds the journal port, the control socket and
/// the metrics endpoint, and runs either the keeper (active) or the follower (passive).
public final class Node: Sendable {
    struct State {
        var role: Config.Role
        var persisted: NodeState
        var keeper: Keeper?
        var follower: Follower?
        var stopping = false
    }

    public let config: Config
    let secret: [UInt8]
    let journalListener: Listener
    let controlListener: Listener
    let metricsListener: Listener?
    let state: Monitor<State>

    public struct StartError: Error, CustomStringConvertible {
        public let description: String
    }

    public init(_ config: Config) throws(StartError) {
        self.config = config
        do {
            try config.validate()
        } catch {
            throw StartError(description: error.description)
        }
        do {
            secret = try config.secretFile.map { (p) throws(JournalError) in try Handshake.loadSecret(path: p) } ?? []
        } catch {
            throw StartError(description: error.description)
        }
        let persisted: NodeState
        do {
            try Sys.mkdir(config.stateDir)
            persisted = try NodeState.load(from: config.stateDir)
        } catch {
            throw StartError(description: "state dir \(config.stateDir): \(error)")
        }
        do {
            journalListener = try Listener.tcp(config.listen)
            try Sys.mkdir(Files.directory(of: config.control), 0o700)
            controlListener = try Listener.unix(path: config.control, mode: 0o600)
            metricsListener = try config.metrics.map { (e) throws(SystemError) in try Listener.tcp(e) }
        } catch {
            throw StartError(description: "cannot listen: \(error)")
        }
        state = Monitor(State(role: config.role, persisted: persisted))
    }

    public var journalPort: UInt16 { journalListener.port }
    public var metricsPort: UInt16? { metricsListener?.port }

    public func start() {
        let role = state.withLock { $0.role }
        Log.info("node", "starting as \(role.rawValue), epoch \(state.withLock { $0.persisted.epoch }); journal \(config.listen) (port \(journalPort)), control \(config.control)")
        if role == .active {
            _ = promote(reason: "--role active")
        } else {
            startFollower()
        }
        Threads.start("journal-accept") { [self] in acceptJournal() }
        Threads.start("control-accept") { [self] in ControlServer(node: self).run(controlListener) }
        if let m = metricsListener { Threads.start("metrics-accept") { [self] in MetricsServer(node: self).run(m) } }
    }

    /// Graceful stop: the follower finishes its batch and saves its position; listeners close.
    public func stop() {
        let (keeper, follower) = state.update { s -> (Keeper?, Follower?) in
            s.stopping = true
            return (s.keeper, s.follower)
        }
        journalListener.close()
        controlListener.close()
        metricsListener?.close()
        keeper?.stop()
        follower?.stop()
        Sys.unlink(config.control)
        Log.info("node", "stopped")
    }

    // MARK: roles

    func startFollower() {
        guard let peer = config.peer, let peerMemcached = config.peerMemcached else {
            Log.error("node", "passive without --peer/--peer-memcached: not following anything")
            return
        }
        let epoch = state.withLock { $0.persisted.epoch }
        let f = Follower(.init(keeper: peer, activeMemcached: peerMemcached, localMemcached: config.memcached, secret: secret,
                               stateDir: config.stateDir, epoch: epoch, batchSize: config.batchSize))
        state.update { $0.follower = f }
        f.start()
    }

    /// Becomes the keeper: raises and persists the epoch first, so a crash mid-promotion never
    /// leaves a keeper whose epoch is not on disk. Idempotent.
    public func promote(reason: String) -> Result<String, StartError> {
        let already = state.withLock { $0.role == .active && $0.keeper != nil }
        if already { return .success("already active (epoch \(state.withLock { $0.persisted.epoch }))") }
        let follower = state.withLock { $0.follower }
        follower?.stop()
        var next = state.withLock { $0.persisted }
        next.epoch += 1
        next.role = "active"
        do { try next.save(to: config.stateDir) } catch {
            return .failure(StartError(description: "cannot persist epoch \(next.epoch): \(error); staying \(state.withLock { $0.role.rawValue })"))
        }
        let keeper = Keeper(backlogBytes: config.backlogSize, epoch: next.epoch)
        state.update { s in
            s.persisted = next
            s.role = .active
            s.keeper = keeper
            s.follower = nil
        }
        Log.info("node", "promoted to active (\(reason)): epoch \(next.epoch), run \(String(keeper.runID, radix: 16))")
        return .success("active, epoch \(next.epoch)")
    }

    /// Stops keeping the journal and follows the peer; the copy counts as in sync only after a
    /// full sync. Idempotent.
    public func demote(reason: String) -> Result<String, StartError> {
        let (role, keeper) = state.withLock { ($0.role, $0.keeper) }
        if role == .passive { return .success("already passive") }
        keeper?.stop()
        var next = state.withLock { $0.persisted }
        next.role = "passive"
        do { try next.save(to: config.stateDir) } catch {
            Log.error("node", "cannot persist role: \(error)")
        }
        FollowerPosition.forget(in: config.stateDir)
        state.update { s in
            s.persisted = next
            s.role = .passive
            s.keeper = nil
        }
        Log.info("node", "demoted to passive (\(reason))")
        startFollower()
        return .success("passive, epoch \(next.epoch)")
    }

    public func resync() -> Result<String, StartError> {
        guard let f = state.withLock({ $0.follower }) else { return .failure(StartError(description: "not a follower")) }
        f.requestResync("operator request")
        return .success("full sync requested")
    }

    public var status: NodeStatus {
        let (role, persisted, keeper, follower) = state.withLock { ($0.role, $0.persisted, $0.keeper, $0.follower) }
        let state: String
        if let keeper { state = keeper.state.withLock { $0.followerInSync } ? "keeping (follower in sync)" : "keeping" } else {
            state = follower?.phase ?? "idle"
        }
        return NodeStatus(role: role.rawValue, epoch: persisted.epoch, state: state, memcached: config.memcached.description,
                          listen: config.listen.description, peer: config.peer?.description, keeper: keeper?.snapshot,
                          follower: follower?.snapshot, lastInSync: follower?.lastInSync ?? persisted.lastInSync)
    }

    // MARK: journal port

    func acceptJournal() {
        while true {
            let conn: Socket
            do { conn = try journalListener.accept() } catch {
                if state.withLock({ $0.stopping }) { return }
                if error.errno == EMFILE || error.errno == ENFILE {
                    Clock.sleep(milliseconds: 100)
                    continue
                }
                return
            }
            Threads.start("journal-conn") { [self] in serveJournal(conn) }
        }
    }

    func serveJournal(_ conn: Socket) {
        defer { conn.close() }
        try? conn.setIOTimeout(milliseconds: 5000)
        let ch = JournalChannel(conn)
        let (epoch, keeper) = state.withLock { ($0.persisted.epoch, $0.keeper) }
        let kind: Message.PeerKind
        do {
            kind = try Handshake.accept(ch, secret: secret, epoch: epoch)
        } catch {
            Log.warning("node", "journal connection from \(conn.remoteAddress) refused: \(error)")
            keeper?.state.update { $0.counters.authFailures += 1 }
            return
        }
        guard let keeper else {
            try? ch.send(.refused(reason: "this node is passive; the keeper is the active node"))
            return
        }
        switch kind {
        case .tap: keeper.serveTap(ch)
        case .follower: keeper.serveFollower(ch)
        }
    }
}
