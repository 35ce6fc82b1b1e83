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
        var detector: FailureDetector?
        /// Serialises promote/demote: heartbeat, the control socket and the peer probe may
        /// all ask at once.
        var transitioning = false
        var lastRecoveryFile: String?
    }

    public let config: Config
    let secret: [UInt8]
    let journalListeners: [Listener]
    let controlListener: Listener
    let metricsListener: Listener?
    let state: Monitor<State>

    public struct StartError: Error, CustomStringConvertible {
        public let description: String
        /// The system call's errno where one refused (EADDRINUSE: the port is taken), so a
        /// caller can act on the cause without reading the text.
        public var errno: Int32? = nil
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
            journalListeners = try config.listen.map { (e) throws(SystemError) in try Listener.tcp(e, freeBind: true) }
            try Sys.mkdir(Files.directory(of: config.control), 0o700)
            controlListener = try Listener.unix(path: config.control, mode: 0o600)
            metricsListener = try config.metrics.map { (e) throws(SystemError) in try Listener.tcp(e) }
        } catch {
            throw StartError(description: "cannot listen: \(error)", errno: error.errno)
        }
        state = Monitor(State(role: config.role, persisted: persisted))
    }

    public var journalPort: UInt16 { journalListeners[0].port }
    public var metricsPort: UInt16? { metricsListener?.port }

    public func start() {
        let role = state.withLock { $0.role }
        Log.info("node", "starting as \(role.rawValue), epoch \(state.withLock { $0.persisted.epoch }); journal \(config.listen.map(\.description).joined(separator: ",")) (port \(journalPort)), control \(config.control)")
        if role == .active {
            _ = promote(reason: "--role active")
        } else {
            startFollower()
        }
        for l in journalListeners {
            Threads.start("journal-accept") { [self] in l.serve("journal") { [self] conn in serveJournal(conn) } }
        }
        if config.peer != nil { Threads.start("peer-probe") { [self] in probePeerLoop() } }
        Threads.start("control-accept") { [self] in ControlServer(node: self).run(controlListener) }
        if let m = metricsListener { Threads.start("metrics-accept") { [self] in MetricsServer(node: self).run(m) } }
    }

    /// Graceful stop: the follower finishes its batch and saves its position; listeners close.
    public func stop() {
        let (keeper, follower, detector) = state.update { s -> (Keeper?, Follower?, FailureDetector?) in
            s.stopping = true
            return (s.keeper, s.follower, s.detector)
        }
        detector?.stop()
        for l in journalListeners { l.close() }
        controlListener.close()
        metricsListener?.close()
        keeper?.stop()
        follower?.stop()
        Sys.unlink(config.control)
        Log.info("node", "stopped")
    }

    public var status: NodeStatus {
        let (role, persisted, keeper, follower, recovery) = state.withLock {
            ($0.role, $0.persisted, $0.keeper, $0.follower, $0.lastRecoveryFile)
        }
        let phase: String
        if let keeper { phase = keeper.state.withLock { $0.followerInSync } ? "keeping (follower in sync)" : "keeping" } else {
            phase = follower?.phase ?? "idle"
        }
        return NodeStatus(role: role.rawValue, epoch: persisted.epoch, state: phase, memcached: config.memcached.description,
                          listen: config.listen.map(\.description).joined(separator: ","), peer: config.peer?.description, keeper: keeper?.snapshot,
                          follower: follower?.snapshot, lastInSync: follower?.lastInSync ?? persisted.lastInSync,
                          recoveryFile: recovery)
    }

    // MARK: journal port

    func serveJournal(_ conn: Socket) {
        let ch = JournalChannel(conn)
        defer { ch.close() }
        try? conn.setIOTimeout(milliseconds: 5000)
        let (epoch, keeper) = state.withLock { ($0.persisted.epoch, $0.keeper) }
        let kind: Message.PeerKind
        do {
            kind = try Handshake.accept(ch, secret: secret, epoch: epoch)
        } catch {
            if case .channel(.stream(.closed)) = error, ch.stream.buffered == 0 {
                // Gone without a byte: a port check (a load balancer's, `nc -z`, a monitor's),
                // not a failed handshake. Counting it as one would page someone for nothing.
                Log.debug("node", "journal connection from \(conn.remoteAddress) closed before the handshake (a port check?)")
                return
            }
            Log.warning("node", "journal connection from \(conn.remoteAddress) refused: \(error)")
            keeper?.state.update { $0.counters.authFailures += 1 }
            return
        }
        guard let keeper else {
            if kind == .probe {
                try? ch.send(.peerInfo(active: false, epoch: epoch, runID: 0))
            } else {
                try? ch.send(.refused(reason: "this node is passive; the keeper is the active node"))
            }
            return
        }
        switch kind {
        case .tap: keeper.serveTap(ch)
        case .follower: keeper.serveFollower(ch)
        // The epoch this keeper runs under, not the highest this node has seen: an active that
        // just learned of a newer epoch and is about to step down must not claim it, or the
        // newer active, seeing a tie it loses on run id, steps down too and leaves none.
        case .probe: try? ch.send(.peerInfo(active: true, epoch: keeper.epoch, runID: keeper.runID))
        }
    }
}
