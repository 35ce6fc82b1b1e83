import JournalWire
import MemcacheClient
import UnderstudyPosix

/// Roles and epochs (Invariant 7): promotion, demotion, the recovery file, epoch learning,
/// two-actives detection and the failure hooks.
extension Node {
    /// Records an epoch seen on a peer; the highest seen is persisted so this node can never
    /// later keep the journal under a lower one.
    func noteEpoch(_ seen: UInt64) {
        let save = state.update { s -> NodeState? in
            guard seen > s.persisted.epoch else { return nil }
            s.persisted.epoch = seen
            return s.persisted
        }
        guard let save else { return }
        do { try save.save(to: config.stateDir) } catch {
            Log.error("node", "cannot persist epoch \(seen): \(error)")
        }
        Log.info("node", "seen epoch \(seen) on the peer; recorded")
    }

    /// Waits out a role change in progress, then starts one; the reason if it cannot (the
    /// node is stopping, or the other change outlasted `transitionWaitMs`). Start and stop
    /// arrive from the cluster manager, an operator and the daemon's own step-down (a probe,
    /// or a keeper told of a higher epoch), so one may find another running. Refusing then
    /// made heartbeat give the whole group up on a failed start, and reboot the node after ten
    /// failed stops; a demote answering "already passive" while a promote was about to finish
    /// left the node active after its last request said passive. A change takes seconds at
    /// most (the follower's drain is bounded).
    private func beginTransition() -> StartError? {
        state.wait(until: { !$0.transitioning || $0.stopping }, timeoutMs: Self.transitionWaitMs) { s, _ -> StartError? in
            if s.stopping { return StartError(description: "the daemon is stopping") }
            if s.transitioning {
                return StartError(description: "another role change is still in progress after \(Self.transitionWaitMs / 1000) s")
            }
            s.transitioning = true
            return nil
        }
    }

    static let transitionWaitMs = 20_000
    /// How long a demote lets an in-sync follower apply the journal's end: in a switchover
    /// that is usually milliseconds of records, so the wait goes on while the follower's acks
    /// move (a loaded machine's burst) and ends a second after they stop; a follower that
    /// stalls that long, or needs more than 10 s, is not keeping up, and what it lacks goes
    /// to the recovery file as before. Well inside the cluster managers' demote timeout (30 s).
    static let handOverMs = 10_000
    static let handOverStallMs = 1000

    private func endTransition() { state.update { $0.transitioning = false } }

    func startFollower() {
        guard let peer = config.peer, let peerMemcached = config.peerMemcached else {
            Log.error("node", "passive without --peer/--peer-memcached: not following anything")
            return
        }
        let epoch = state.withLock { $0.persisted.epoch }
        var options = Follower.Options(keeper: peer, activeMemcached: peerMemcached, localMemcached: config.memcached,
                                       secret: secret, stateDir: config.stateDir, epoch: epoch, batchSize: config.batchSize,
                                       lruSyncIntervalMs: config.lruSyncInterval * 1000)
        options.onEpochSeen = { [weak self] e in self?.noteEpoch(e) }
        let f = Follower(options)
        let detector = makeDetector(target: peerMemcached, hook: config.onActiveFailure, name: "on-active-failure",
                                    hostFailuresToCluster: true) { _ in true }
        state.update { s in
            s.follower = f
            s.detector = detector
        }
        f.start()
        detector?.start("probe-active")
    }

    /// Probes `target`; after enough failures runs `hook` if `allowed` agrees.
    func makeDetector(target: Endpoint, hook: String, name: String, hostFailuresToCluster: Bool = false,
                      allowed: @escaping @Sendable (Node) -> Bool) -> FailureDetector? {
        guard hook != "none" else { return nil }
        let h = Hook(name: name, command: hook, timeoutMs: config.hookTimeout)
        return FailureDetector(target: target, intervalMs: config.probeInterval, failures: config.probeFailures,
                               hostFailuresToCluster: hostFailuresToCluster) { [weak self] why in
            guard let self, !self.state.withLock({ $0.stopping }) else { return }
            if allowed(self) {
                h.run(reason: why)
            } else {
                Log.warning("hook", "\(name): not running '\(hook)': \(why), but the peer is not in sync (a failover now would lose data)")
            }
        }
    }

    /// Becomes the keeper. Drains what the follower can still apply, raises the epoch above
    /// every epoch seen and persists it before accepting a single tap. Idempotent.
    public func promote(reason: String) -> Result<String, StartError> {
        if let refused = beginTransition() { return .failure(refused) }
        defer { endTransition() }
        if state.withLock({ $0.role == .active && $0.keeper != nil }) {
            return .success("already active (epoch \(state.withLock { $0.persisted.epoch }))")
        }
        let (follower, detector) = state.withLock { ($0.follower, $0.detector) }
        detector?.stop()
        var inSync = true
        var lineage: Keeper.Lineage?
        if let follower {
            inSync = follower.snapshot.inSync
            let (applied, left) = follower.drainAndStop(timeoutMs: 3000)
            Log.info("node", "follower drained through offset \(applied)\(left > 0 ? "; \(left) records could not be applied (active unreachable)" : "")")
            lineage = continuedRun(follower)
        }
        var next = state.withLock { $0.persisted }
        next.epoch += 1
        next.role = "active"
        do { try next.save(to: config.stateDir) } catch {
            return .failure(StartError(description: "cannot persist epoch \(next.epoch): \(error); not promoting"))
        }
        let keeper = Keeper(backlogBytes: config.backlogSize, epoch: next.epoch, continuing: lineage) { [weak self] higher in
            Threads.start("step-down") { [weak self] in
                self?.noteEpoch(higher)
                _ = self?.demote(reason: "a peer has seen epoch \(higher)")
            }
        }
        let local = makeDetector(target: config.memcached, hook: config.onLocalFailure, name: "on-local-failure") { node in
            node.state.withLock { $0.keeper?.state.withLock { $0.followerInSync } ?? false }
        }
        state.update { s in
            s.persisted = next
            s.role = .active
            s.keeper = keeper
            s.follower = nil
            s.detector = local
        }
        local?.start("probe-local")
        if !inSync { Log.warning("node", "promoted while the local copy was not known to be in sync") }
        Log.info("node", "promoted to active (\(reason)): epoch \(next.epoch), run \(String(keeper.runID, radix: 16))"
                 + (lineage.map { " continuing run \(String($0.runID, radix: 16)) from offset \($0.offset + 1)" } ?? ""))
        return .success("active, epoch \(next.epoch)")
    }

    /// The run the follower's copy is complete through, if the local memcached is still the
    /// process that holds it: one restarted under a follower between connections is empty,
    /// whatever the offsets say, and must not be continued from.
    private func continuedRun(_ follower: Follower) -> Keeper.Lineage? {
        guard let copy = follower.completeCopy,
              let now = localIdentity(), copy.local.sameProcess(as: now) else { return nil }
        return Keeper.Lineage(runID: copy.runID, offset: copy.applied)
    }

    private func localIdentity() -> MemcachedIdentity? {
        guard let conn = try? MemcacheConnection(config.memcached, connectTimeoutMs: 1000, ioTimeoutMs: 1000) else { return nil }
        defer { conn.close() }
        return try? MemcachedIdentity.read(conn)
    }

    /// Saves where this node's copy stands after a complete hand-over, so its follower resumes
    /// from the peer's continuation of this run; forgets any older position otherwise. The end
    /// is read after the keeper stopped: nothing is journaled once the hand-over began, but a
    /// gap a tap reports is, and then the follower did not apply everything.
    private func positionAfterHandOver(_ keeper: Keeper?, handedOver: Bool) -> FollowerPosition? {
        if handedOver, let keeper,
           let end = keeper.state.withLock({ s in s.followerCaughtUp ? s.backlog.lastOffset : nil }),
           let local = localIdentity() {
            let position = FollowerPosition(runID: keeper.runID, applied: end, local: local, active: nil)
            do {
                try position.save(to: config.stateDir)
                return position
            } catch {
                Log.warning("node", "cannot save the follower position in \(config.stateDir): \(error); this node will full sync")
            }
        }
        FollowerPosition.forget(in: config.stateDir)
        return nil
    }

    /// Stops keeping the journal and follows the peer. An in-sync follower is first given the
    /// journal's end (`Keeper.handOver`); if it took all of it, this node's copy is the very
    /// state the peer's next run continues (`Keeper.Lineage`), and it resumes from there once
    /// the peer is promoted; otherwise it full syncs before it counts as in sync. Writes only
    /// this node holds go to a recovery file. Idempotent.
    public func demote(reason: String) -> Result<String, StartError> {
        if let refused = beginTransition() { return .failure(refused) }
        defer { endTransition() }
        if state.withLock({ $0.role == .passive }) { return .success("already passive") }
        let (keeper, detector) = state.withLock { ($0.keeper, $0.detector) }
        var handedOver = false
        if let keeper, keeper.state.withLock({ $0.followerInSync }) {
            Log.info("node", "handing over: journaling stopped; the follower applies the rest while it makes progress "
                     + "(up to \(Self.handOverMs) ms, \(Self.handOverStallMs) ms without)")
            let start = Clock.monoNanos()
            let caughtUp = keeper.handOver(timeoutMs: Self.handOverMs, stallMs: Self.handOverStallMs)
            handedOver = caughtUp
            let ms = (Clock.monoNanos() - start) / 1_000_000
            let end = keeper.state.withLock { $0.backlog.lastOffset }
            Log.info("node", caughtUp ? "handed over: the follower applied the journal to its end (offset \(end)) in \(ms) ms"
                                      : "the follower did not apply the journal to its end (offset \(end)) within \(ms) ms")
        }
        keeper?.stop()
        if let keeper {
            let (orphans, lost) = keeper.orphans()
            if !orphans.isEmpty || lost > 0 {
                do {
                    let path = try RecoveryFile.write(orphans: orphans, lostFromBacklog: lost, epoch: keeper.epoch, runID: keeper.runID,
                                                      memcached: config.memcached, dir: config.stateDir)
                    state.update { $0.lastRecoveryFile = path }
                    Log.warning("node", "\(orphans.count) journal records were never applied by a follower; saved to \(path)")
                } catch {
                    // Keep the data: a demoted node full syncs, which would overwrite them.
                    Log.error("node", "cannot write the recovery file in \(config.stateDir): \(error); staying active")
                    keeper.resume()
                    return .failure(StartError(description: "cannot write recovery file: \(error); not demoting"))
                }
            }
        }
        detector?.stop()
        var next = state.withLock { $0.persisted }
        next.role = "passive"
        do { try next.save(to: config.stateDir) } catch {
            Log.error("node", "cannot persist role: \(error)")
        }
        let position = positionAfterHandOver(keeper, handedOver: handedOver)
        state.update { s in
            s.persisted = next
            s.role = .passive
            s.keeper = nil
            s.detector = nil
        }
        Log.info("node", "demoted to passive (\(reason)); following \(config.peer?.description ?? "nobody") "
                 + (position.map { "from offset \($0.applied + 1) of this run once the peer continues it, else after a full sync" } ?? "after a full sync"))
        startFollower()
        return .success("passive, epoch \(next.epoch)")
    }

    public func resync() -> Result<String, StartError> {
        guard let f = state.withLock({ $0.follower }) else { return .failure(StartError(description: "not a follower")) }
        f.requestResync("operator request")
        return .success("full sync requested")
    }

    /// While active, asks the peer who it is once a second. Two actives (a healed partition,
    /// or heartbeat dead on one side) must not both keep a journal: the one with the lower
    /// (epoch, run id) steps down.
    func probePeerLoop() {
        guard let peer = config.peer else { return }
        while !state.withLock({ $0.stopping }) {
            Clock.sleep(milliseconds: 1000)
            guard let keeper = state.withLock({ $0.keeper }) else { continue }
            guard let (ch, _) = try? Handshake.connect(peer, secret: secret, kind: .probe, timeoutMs: 1000) else { continue }
            defer { ch.stream.socket.close() }
            guard case .peerInfo(let active, let theirEpoch, let theirRun)? = try? ch.receive() else { continue }
            noteEpoch(theirEpoch)
            guard active else { continue }
            let ours = (keeper.epoch, keeper.runID)
            if (theirEpoch, theirRun) > ours {
                Log.warning("node", "two actives: peer \(peer) keeps epoch \(theirEpoch), ours is \(ours.0); stepping down")
                _ = demote(reason: "peer \(peer) is active with a higher epoch")
            } else {
                Log.warning("node", "two actives: peer \(peer) keeps epoch \(theirEpoch) ≤ ours \(ours.0); it must step down")
            }
        }
    }
}
