import UnderstudyPosix

/// Mutual challenge-response on the shared secret (Invariant 8).
///
/// The keeper proves nothing by accepting a connection and the client proves nothing by
/// connecting; each side proves knowledge of the secret by MACing the other side's fresh nonce,
/// so a recorded handshake cannot be replayed. Without a secret both sides MAC with an empty
/// key: that still detects a misconfigured pair, and such keepers only bind loopback.
public enum Handshake {
    static let clientLabel = Array("understudy/journal/v1/client".utf8)
    static let serverLabel = Array("understudy/journal/v1/keeper".utf8)

    public static func nonce() -> [UInt8] {
        var g = SystemRandomNumberGenerator()
        return (0..<32).map { _ in UInt8.random(in: 0...255, using: &g) }
    }

    public enum Failure: Error, CustomStringConvertible {
        case channel(JournalChannel.ReceiveError)
        case connect(SystemError)

        public var description: String {
            switch self {
            case .channel(let e): return e.description
            case .connect(let e): return e.description
            }
        }
    }

    /// Keeper side. Returns which kind of peer authenticated; refuses (and says why) otherwise.
    public static func accept(_ ch: JournalChannel, secret: [UInt8], epoch: UInt64) throws(Failure) -> Message.PeerKind {
        let ours = nonce()
        do {
            try ch.send(.hello(version: Message.version, nonce: ours, epoch: epoch))
            guard case .auth(let kind, let mac, let theirs) = try ch.receive() else {
                throw JournalChannel.ReceiveError.journal(.unexpected("expected auth"))
            }
            let want = HMAC.sha256(key: secret, message: clientLabel + ours + [kind.rawValue])
            guard HMAC.equal(mac, want) else {
                try? ch.send(.refused(reason: "authentication failed: wrong or missing shared secret"))
                throw JournalChannel.ReceiveError.journal(.authenticationFailed("peer \(ch.peer) sent a wrong MAC"))
            }
            try ch.send(.authOK(mac: HMAC.sha256(key: secret, message: serverLabel + theirs)))
            return kind
        } catch let e as JournalChannel.ReceiveError {
            throw .channel(e)
        } catch {
            throw .channel(.stream(error as! StreamError))
        }
    }

    /// Client side: connects, proves the secret, and checks the keeper's proof.
    /// Returns the channel and the epoch the keeper announced.
    public static func connect(_ endpoint: Endpoint, secret: [UInt8], kind: Message.PeerKind,
                               timeoutMs: Int = 2000) throws(Failure) -> (JournalChannel, UInt64) {
        let socket: Socket
        do {
            socket = try Socket.connect(to: endpoint, timeoutMs: timeoutMs)
            try socket.setIOTimeout(milliseconds: timeoutMs)
        } catch {
            throw .connect(error)
        }
        let ch = JournalChannel(socket)
        do {
            let hello = try ch.receive()
            if case .refused(let why) = hello { throw JournalChannel.ReceiveError.journal(.refused(why)) }
            guard case .hello(_, let theirs, let epoch) = hello else {
                throw JournalChannel.ReceiveError.journal(.unexpected("expected hello from \(endpoint)"))
            }
            let ours = nonce()
            try ch.send(.auth(kind: kind, mac: HMAC.sha256(key: secret, message: clientLabel + theirs + [kind.rawValue]), nonce: ours))
            switch try ch.receive() {
            case .authOK(let mac):
                guard HMAC.equal(mac, HMAC.sha256(key: secret, message: serverLabel + ours)) else {
                    throw JournalChannel.ReceiveError.journal(.authenticationFailed("keeper \(endpoint) does not know the secret"))
                }
            case .refused(let why):
                throw JournalChannel.ReceiveError.journal(.refused(why))
            default:
                throw JournalChannel.ReceiveError.journal(.unexpected("expected auth reply from \(endpoint)"))
            }
            return (ch, epoch)
        } catch let e as JournalChannel.ReceiveError {
            socket.close()
            throw .channel(e)
        } catch {
            socket.close()
            throw .channel(.stream(error as! StreamError))
        }
    }

    /// Reads a secret file: its bytes with trailing whitespace removed. A missing or empty
    /// file is an error, never a silent fallback to "no secret".
    public static func loadSecret(path: String) throws(JournalError) -> [UInt8] {
        let bytes: [UInt8]
        do { bytes = try Files.read(path) } catch { throw .authenticationFailed("cannot read secret file: \(error)") }
        var b = bytes
        while let last = b.last, last == 0x0A || last == 0x0D || last == 0x20 || last == 0x09 { b.removeLast() }
        if b.isEmpty { throw .authenticationFailed("secret file \(path) is empty") }
        return b
    }
}
