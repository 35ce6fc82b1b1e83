import CLinuxEvents
import Glibc

/// The one place that calls libc's file and socket functions.
///
/// Every wrapper retries on EINTR and turns `-1` into a ``SystemError`` whose operation names
/// the call and its subject. `close` is the exception: on Linux the descriptor is gone even when
/// it reports EINTR, so retrying could close somebody else's freshly opened descriptor.
public enum Sys {
    @inline(__always)
    static func retrying<T: BinaryInteger>(_ op: @autoclosure () -> String, _ body: () -> T) throws(SystemError) -> T {
        while true {
            let result = body()
            if result >= 0 { return result }
            let err = Glibc.errno
            if err == EINTR { continue }
            throw SystemError(errno: err, operation: op())
        }
    }

    public static func socket(_ domain: Int32, _ type: Int32, _ what: String) throws(SystemError) -> Int32 {
        try retrying("socket \(what)") { Glibc.socket(domain, type | Int32(SOCK_CLOEXEC.rawValue), 0) }
    }

    public static func close(_ fd: Int32) {
        _ = Glibc.close(fd)
    }

    public static func shutdown(_ fd: Int32) {
        _ = Glibc.shutdown(fd, Int32(SHUT_RDWR))
    }

    public static func read(_ fd: Int32, _ buffer: UnsafeMutableRawBufferPointer, _ what: @autoclosure () -> String) throws(SystemError) -> Int {
        try retrying("read \(what())") { Glibc.read(fd, buffer.baseAddress, buffer.count) }
    }

    /// Reads what is there without blocking: nil when nothing is (EAGAIN), 0 at end of stream.
    public static func readNow(_ fd: Int32, _ buffer: UnsafeMutableRawBufferPointer, _ what: @autoclosure () -> String) throws(SystemError) -> Int? {
        do {
            return try retrying("read \(what())") { Glibc.recv(fd, buffer.baseAddress, buffer.count, Int32(MSG_DONTWAIT)) }
        } catch where error.errno == EAGAIN || error.errno == EWOULDBLOCK {
            return nil
        }
    }

    public static func send(_ fd: Int32, _ buffer: UnsafeRawBufferPointer, _ what: @autoclosure () -> String) throws(SystemError) -> Int {
        try retrying("write \(what())") { Glibc.send(fd, buffer.baseAddress, buffer.count, Int32(MSG_NOSIGNAL)) }
    }

    /// Sends without blocking: 0 when the socket buffer is full (EAGAIN), which is not an error.
    public static func sendNow(_ fd: Int32, _ buffer: UnsafeRawBufferPointer, _ what: @autoclosure () -> String) throws(SystemError) -> Int {
        do {
            return try retrying("write \(what())") { Glibc.send(fd, buffer.baseAddress, buffer.count, Int32(MSG_NOSIGNAL | MSG_DONTWAIT)) }
        } catch where error.errno == EAGAIN || error.errno == EWOULDBLOCK {
            return 0
        }
    }

    public static func write(_ fd: Int32, _ buffer: UnsafeRawBufferPointer, _ what: @autoclosure () -> String) throws(SystemError) -> Int {
        try retrying("write \(what())") { Glibc.write(fd, buffer.baseAddress, buffer.count) }
    }

    /// poll(2) one descriptor. Returns false on timeout. EINTR restarts with the full timeout,
    /// which is fine for our bounded waits: callers loop on their own deadlines.
    public static func poll(_ fd: Int32, events: Int16, timeoutMs: Int32, _ what: @autoclosure () -> String) throws(SystemError) -> Bool {
        var pfd = pollfd(fd: fd, events: events, revents: 0)
        let n = try retrying("poll \(what())") { Glibc.poll(&pfd, 1, timeoutMs) }
        return n > 0
    }

    public static func setOption(_ fd: Int32, _ level: Int32, _ name: Int32, _ value: Int32, _ what: String) throws(SystemError) {
        var v = value
        _ = try retrying("setsockopt \(what)") {
            Glibc.setsockopt(fd, level, name, &v, socklen_t(MemoryLayout<Int32>.size))
        }
    }

    /// `SO_LINGER` on with a zero timeout: `close` then resets the connection and drops what
    /// was not yet sent, instead of delivering it after a FIN.
    public static func setResetOnClose(_ fd: Int32, _ what: String) throws(SystemError) {
        var l = linger(l_onoff: 1, l_linger: 0)
        _ = try retrying("setsockopt SO_LINGER \(what)") {
            Glibc.setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, socklen_t(MemoryLayout<linger>.size))
        }
    }

    public static func setTimeout(_ fd: Int32, _ name: Int32, milliseconds: Int, _ what: String) throws(SystemError) {
        var tv = timeval(tv_sec: milliseconds / 1000, tv_usec: (milliseconds % 1000) * 1000)
        _ = try retrying("setsockopt timeout \(what)") {
            Glibc.setsockopt(fd, SOL_SOCKET, name, &tv, socklen_t(MemoryLayout<timeval>.size))
        }
    }

    public static func connect(_ fd: Int32, _ addr: UnsafePointer<sockaddr>, _ len: socklen_t, _ what: String) throws(SystemError) {
        let r = Glibc.connect(fd, addr, len)
        if r == 0 { return }
        let err = Glibc.errno
        // A connect interrupted by a signal keeps going asynchronously; treat it like EINPROGRESS.
        if err == EINPROGRESS || err == EINTR { throw SystemError(errno: EINPROGRESS, operation: "connect \(what)") }
        throw SystemError(errno: err, operation: "connect \(what)")
    }

    public static func bind(_ fd: Int32, _ addr: UnsafePointer<sockaddr>, _ len: socklen_t, _ what: String) throws(SystemError) {
        _ = try retrying("bind \(what)") { Glibc.bind(fd, addr, len) }
    }

    public static func listen(_ fd: Int32, _ backlog: Int32, _ what: String) throws(SystemError) {
        _ = try retrying("listen \(what)") { Glibc.listen(fd, backlog) }
    }

    public static func accept(_ fd: Int32, _ what: String) throws(SystemError) -> Int32 {
        let c = try retrying("accept \(what)") { Glibc.accept(fd, nil, nil) }
        _ = Glibc.fcntl(c, F_SETFD, FD_CLOEXEC)
        return c
    }

    public static func socketError(_ fd: Int32) -> Int32 {
        var err: Int32 = 0
        var len = socklen_t(MemoryLayout<Int32>.size)
        _ = Glibc.getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len)
        return err
    }

    public static func setNonBlocking(_ fd: Int32, _ on: Bool) {
        let flags = Glibc.fcntl(fd, F_GETFL)
        _ = Glibc.fcntl(fd, F_SETFL, on ? flags | O_NONBLOCK : flags & ~O_NONBLOCK)
    }

    public static func epollCreate() throws(SystemError) -> Int32 {
        try retrying("epoll_create1") { ule_epoll_create() }
    }

    public static func epollControl(_ epfd: Int32, _ op: Int32, _ fd: Int32, events: UInt32, token: UInt64, _ what: @autoclosure () -> String) throws(SystemError) {
        _ = try retrying("epoll_ctl \(what())") { ule_epoll_ctl(epfd, op, fd, events, token) }
    }

    /// Waits for readiness; fills `tokens`/`events` and returns how many. EINTR restarts the
    /// wait with the full timeout, which event loops tolerate: they recompute deadlines per turn.
    public static func epollWait(_ epfd: Int32, tokens: UnsafeMutablePointer<UInt64>, events: UnsafeMutablePointer<UInt32>, max: Int32, timeoutNanos: Int64) throws(SystemError) -> Int {
        Int(try retrying("epoll_wait") { ule_epoll_wait(epfd, tokens, events, max, timeoutNanos) })
    }

    /// A non-blocking eventfd, for waking a thread parked in `epoll_wait`.
    public static func eventfd() throws(SystemError) -> Int32 {
        try retrying("eventfd") { ule_eventfd() }
    }

    public static func open(_ path: String, _ flags: Int32, _ mode: mode_t = 0o600) throws(SystemError) -> Int32 {
        try retrying("open \(path)") { Glibc.open(path, flags | O_CLOEXEC, mode) }
    }

    public static func fsync(_ fd: Int32, _ what: String) throws(SystemError) {
        _ = try retrying("fsync \(what)") { Glibc.fsync(fd) }
    }

    public static func rename(_ from: String, _ to: String) throws(SystemError) {
        _ = try retrying("rename \(from) -> \(to)") { Glibc.rename(from, to) }
    }

    public static func unlink(_ path: String) {
        _ = Glibc.unlink(path)
    }

    /// The file at `path` itself (a symlink is not followed), or nil if there is none.
    public static func lstat(_ path: String) throws(SystemError) -> stat? {
        var st = stat()
        while Glibc.lstat(path, &st) != 0 {
            let err = Glibc.errno
            if err == EINTR { continue }
            if err == ENOENT { return nil }
            throw SystemError(errno: err, operation: "lstat \(path)")
        }
        return st
    }

    public static func chmod(_ path: String, _ mode: mode_t) throws(SystemError) {
        _ = try retrying("chmod \(path)") { Glibc.chmod(path, mode) }
    }

    public static func mkdir(_ path: String, _ mode: mode_t = 0o700) throws(SystemError) {
        let r = Glibc.mkdir(path, mode)
        if r == 0 || Glibc.errno == EEXIST { return }
        throw SystemError(errno: Glibc.errno, operation: "mkdir \(path)")
    }
}
