import Glibc
import Synchronization

/// A listening socket. `close()` from another thread (via `shutdown`) ends a blocked `accept`.
public final class Listener: Sendable {
    public let socket: Socket
    public let name: String
    /// The port the kernel gave us when asked for port 0.
    public let port: UInt16
    /// The socket file a Unix listener made, removed again by `close()`.
    private let boundFile: BoundFile?

    /// A socket file as bind made it: `close()` removes the path only while it is still this
    /// file, not one a newer process has since put there. The change time is part of the
    /// identity because a file system hands a freed inode number straight to the next file.
    struct BoundFile: Sendable {
        let path: String
        let identity: [Int]

        init(path: String, _ st: stat) {
            self.path = path
            identity = Self.identity(st)
        }

        static func identity(_ st: stat) -> [Int] {
            [Int(st.st_dev), Int(st.st_ino), st.st_ctim.tv_sec, st.st_ctim.tv_nsec]
        }

        func isStill(at st: stat) -> Bool { Self.identity(st) == identity }
    }

    init(socket: Socket, name: String, port: UInt16, boundFile: BoundFile? = nil) {
        self.socket = socket
        self.name = name
        self.port = port
        self.boundFile = boundFile
    }

    /// Binds `address`: TCP as `tcp`, a Unix socket path as `unix` with `unixMode`.
    public static func bind(_ address: ListenAddress, unixMode: mode_t) throws(SystemError) -> Listener {
        switch address {
        case .tcp(let endpoint): try tcp(endpoint)
        case .unix(let path): try unix(path: path, mode: unixMode)
        }
    }

    public var isUnix: Bool { boundFile != nil }

    /// Binds exactly the address given. Wildcards must be spelled out by the caller, which is
    /// where the "nothing on all interfaces unless told to" policy is enforced.
    ///
    /// `freeBind` sets IP_FREEBIND so an address that is not (yet) on this host can be bound:
    /// the VIP, which heartbeat moves here only when this node becomes active.
    public static func tcp(_ endpoint: Endpoint, backlog: Int32 = 512, freeBind: Bool = false) throws(SystemError) -> Listener {
        guard let addr = try endpoint.resolve().first else {
            throw SystemError(errno: EADDRNOTAVAIL, operation: "resolve \(endpoint)")
        }
        let fd = try Sys.socket(addr.family, Int32(SOCK_STREAM.rawValue), endpoint.description)
        let socket = Socket(fd: fd, peer: endpoint.description)
        try Sys.setOption(fd, SOL_SOCKET, SO_REUSEADDR, 1, "SO_REUSEADDR \(endpoint)")
        if freeBind { try Sys.setOption(fd, Int32(IPPROTO_IP), 15 /* IP_FREEBIND */, 1, "IP_FREEBIND \(endpoint)") }
        try addr.withSockaddr { (sa, len) throws(SystemError) in try Sys.bind(fd, sa, len, endpoint.description) }
        try Sys.listen(fd, backlog, endpoint.description)
        return Listener(socket: socket, name: endpoint.description, port: boundPort(fd))
    }

    /// A Unix listener whose file is created with `mode` before anyone can connect: the umask
    /// is tightened around bind so there is no window where the socket is world-connectable.
    ///
    /// A socket file a dead process left is replaced, as memcached and Redis replace theirs.
    /// One that a live process still accepts on is refused (`EADDRINUSE`) rather than stolen,
    /// which would leave that process listening on a file nobody can reach; and a path that
    /// is not a socket is never deleted (`EEXIST`).
    public static func unix(path: String, mode: mode_t = 0o600, backlog: Int32 = 512) throws(SystemError) -> Listener {
        try claimSocketPath(path)
        let fd = try Sys.socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), path)
        let socket = Socket(fd: fd, peer: path)
        let old = umask(~mode & 0o777)
        defer { umask(old) }
        try Socket.withUnixAddress(path) { (sa, len) throws(SystemError) in try Sys.bind(fd, sa, len, path) }
        try Sys.chmod(path, mode)
        try Sys.listen(fd, backlog, path)
        guard let st = try Sys.lstat(path) else { throw SystemError(errno: ENOENT, operation: "listen on \(path): the socket file vanished") }
        return Listener(socket: socket, name: path, port: 0, boundFile: BoundFile(path: path, st))
    }

    /// Clears `path` for a new socket file, or says why it cannot be.
    static func claimSocketPath(_ path: String) throws(SystemError) {
        guard let st = try Sys.lstat(path) else { return }
        guard st.st_mode & S_IFMT == S_IFSOCK else {
            throw SystemError(errno: EEXIST, operation: "listen on \(path): the path exists and is not a socket")
        }
        if try acceptsConnections(at: path) {
            throw SystemError(errno: EADDRINUSE, operation: "listen on \(path): another process accepts connections there")
        }
        Sys.unlink(path)
    }

    /// Whether some process listens on the socket file at `path`. The probe connects without
    /// blocking: a live listener whose backlog is full answers `EAGAIN`, and counts as live;
    /// only `ECONNREFUSED` (nobody accepts there) says no.
    static func acceptsConnections(at path: String) throws(SystemError) -> Bool {
        let fd = try Sys.socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), path)
        defer { Sys.close(fd) }
        Sys.setNonBlocking(fd, true)
        do {
            try Socket.withUnixAddress(path) { (sa, len) throws(SystemError) in try Sys.connect(fd, sa, len, path) }
        } catch where error.errno == ECONNREFUSED {
            return false
        }
        return true
    }

    private static func boundPort(_ fd: Int32) -> UInt16 {
        var st = sockaddr_storage()
        var len = socklen_t(MemoryLayout<sockaddr_storage>.size)
        _ = withUnsafeMutablePointer(to: &st) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) }
        }
        return withUnsafeBytes(of: st) { raw in
            if Int32(st.ss_family) == AF_INET6 { return UInt16(bigEndian: raw.load(as: sockaddr_in6.self).sin6_port) }
            return UInt16(bigEndian: raw.load(as: sockaddr_in.self).sin_port)
        }
    }

    public func accept() throws(SystemError) -> Socket {
        let fd = try socket.using { fd throws(SystemError) in try Sys.accept(fd, name) }
        let s = Socket(fd: fd, peer: "client of \(name)")
        if !isUnix { try? Sys.setOption(fd, Int32(IPPROTO_TCP), TCP_NODELAY, 1, "TCP_NODELAY") }
        return s
    }

    /// Uid of the process on the other end of an accepted Unix connection (SO_PEERCRED).
    public static func peerUID(_ socket: Socket) -> uid_t? {
        // struct ucred needs _GNU_SOURCE, which Glibc's module does not set; same layout.
        var cred = PeerCredentials()
        var len = socklen_t(MemoryLayout<PeerCredentials>.size)
        guard getsockopt(socket.fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0 else { return nil }
        return cred.uid
    }

    public func close() {
        guard !closed.exchange(true, ordering: .acquiringAndReleasing) else { return }
        socket.close()
        // Only our own file, and only once nobody accepts on it: a file system may hand our
        // inode number and a same-tick change time to a newer listener's file.
        if let f = boundFile, let st = try? Sys.lstat(f.path), f.isStill(at: st), (try? Self.acceptsConnections(at: f.path)) == false {
            Sys.unlink(f.path)
        }
    }

    private let closed = Atomic<Bool>(false)

    /// Accepts until `close()`, handing each connection to `handle` on its own thread.
    public func serve(_ name: String, _ handle: @escaping @Sendable (Socket) -> Void) {
        acceptEach(name) { conn in Threads.start(name) { handle(conn) } }
    }

    /// Accepts until `close()`, calling `handle` with each connection on this thread.
    ///
    /// Transient failures (a client that aborted, EMFILE, ENOBUFS) are logged and retried
    /// after a short pause: one bad moment must not leave a port that accepts into its
    /// backlog but never answers.
    public func acceptEach(_ name: String, _ handle: (Socket) -> Void) {
        var lastError = ""
        while !closed.load(ordering: .acquiring) {
            do {
                handle(try accept())
            } catch {
                if closed.load(ordering: .acquiring) { return }
                if error.description != lastError {
                    Log.error(name, "\(error); retrying")
                    lastError = error.description
                }
                Clock.sleep(milliseconds: 50)
            }
        }
    }
}

struct PeerCredentials {
    var pid: pid_t = 0
    var uid: uid_t = 0
    var gid: gid_t = 0
}
