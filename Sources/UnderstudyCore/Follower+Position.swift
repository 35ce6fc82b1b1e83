import JournalWire
import MemcacheClient
import UnderstudyPosix

/// Where the follower is, and of which memcached processes its copy is: saved so a restarted
/// follower resumes from the backlog instead of copying everything again, and checked so a
/// restarted memcached (its copy gone) is noticed.
extension Follower {
    struct Identities: Sendable {
        var local: MemcachedIdentity?
        var active: MemcachedIdentity?
    }

    struct SavedPosition {
        /// What is on disk; nil: nothing.
        var position: FollowerPosition?
        /// Why the last save failed (a full disk, say), logged once rather than every second.
        var failure: String?
    }

    /// Restores `(run id, offset)` if the local memcached still is the one that holds that copy.
    func loadPosition() {
        guard let pos = FollowerPosition.load(from: options.stateDir) else { return }
        state.update { s in
            s.runID = pos.runID
            s.applied = pos.applied
            s.received = pos.applied
            s.copyValid = true
            s.identities = Identities(local: pos.local, active: pos.active)
        }
        savedPosition.withLock { $0.position = pos }
        Log.info("follower", "saved position: run \(String(pos.runID, radix: 16)) offset \(pos.applied)")
    }

    /// Saves the position if the copy is valid and it moved since the last save.
    func persist() {
        savedPosition.withLock { saved in
            guard let pos = completeCopy, pos != saved.position else { return }
            do {
                try pos.save(to: options.stateDir)
                saved.position = pos
                if saved.failure != nil { Log.info("follower", "position saved to \(options.stateDir) again") }
                saved.failure = nil
            } catch {
                let why = "\(error)"
                if why != saved.failure { Log.error("follower", "cannot save position to \(options.stateDir): \(why) (a restarted follower resumes from the last position saved, or full syncs if the backlog has moved past it)") }
                saved.failure = why
            }
        }
    }

    /// Removes the saved position, from the moment the copy stops being valid: a follower
    /// restarted mid-sync must not resume a half-made copy.
    func forgetPosition() {
        savedPosition.withLock { saved in
            FollowerPosition.forget(in: options.stateDir)
            saved.position = nil
        }
    }

    /// Saves the position once a second until the follower stops. This runs on a thread of
    /// its own because a save is two fsyncs (about 1 ms on these VMs, 20 ms at worst): on the
    /// applier, as it was, every record arriving meanwhile waited for them.
    func savePositionLoop() {
        while !finished.wait(until: { $0 }, timeoutMs: 1000, { _, done in done }) {
            persist()
        }
    }

    func checkIdentities(_ copier: KeyCopier) throws(FollowerFailure) {
        do {
            let local = try MemcachedIdentity.read(copier.local)
            let active = try MemcachedIdentity.read(copier.active)
            let ids = state.withLock { $0.identities }
            if let old = ids.local, !old.sameProcess(as: local) {
                Log.warning("follower", "local memcached restarted (\(old) → \(local)): its copy is gone; full sync")
                requestResync("local memcached restarted")
            } else if ids.local == nil && state.withLock({ !$0.copyValid }) {
                requestResync("no saved position for this local memcached")
            }
            if let old = ids.active, !old.sameProcess(as: active) {
                Log.warning("follower", "active memcached restarted (\(old) → \(active)); full sync")
                requestResync("active memcached restarted")
            }
            state.update { $0.identities = Identities(local: local, active: active) }
        } catch {
            throw .memcached(error)
        }
    }
}
