import Glibc

/// pipe2(2) is hidden behind _GNU_SOURCE in the Glibc module. It matters here: with pipe()
/// then fcntl(), a child spawned by another thread in between inherits the write end, and
/// the reader never sees end-of-file until that unrelated child exits.
@_silgen_name("pipe2")
private func linuxPipe2(_ fds: UnsafeMutablePointer<Int32>, _ flags: Int32) -> Int32

/// A child process started with `posix_spawn` and reaped with `waitpid` on its own pid.
///
/// Why not Foundation's `Process`: on this Linux its `waitUntilExit` was seen to hang for good
/// with the child already a zombie (its SIGCHLD-driven run loop missed the exit while other
/// children were being spawned), which stalled a whole test run for 15 minutes. Reaping by pid
/// cannot miss. The child also gets a clean signal state: the daemon blocks SIGTERM/SIGINT for
/// `sigwait` and ignores SIGPIPE, and both would otherwise be inherited by every hook it runs.
public final class Subprocess: Sendable {
    /// Where a child's standard stream goes.
    public enum Stream: Sendable {
        case inherit
        case null
        /// Reads a file (stdin), or appends to one, created if needed (stdout, stderr).
        case file(String)
        /// A pipe the parent reads (``run(_:_:environment:stdin:timeoutMs:)`` collects it).
        case pipe
    }

    public struct Exit: Sendable, Equatable, CustomStringConvertible {
        /// The exit code, or 128 + signal when killed by one (the shell's convention).
        public let code: Int32
        public let signal: Int32?
        public var description: String { signal.map { "killed by signal \($0)" } ?? "exited \(code)" }
    }

    public let pid: pid_t
    /// Read end of the stdout pipe when `.pipe` was asked for (stderr shares it if also `.pipe`).
    let outputFD: Int32?
    let exitState: Monitor<Exit?>

    /// Starts `path` with `arguments` (argv[0] is `path`). `environment` nil inherits ours.
    /// `newProcessGroup` makes the child lead its own group so ``kill(_:group:)`` reaches
    /// everything a shell command started.
    public init(_ path: String, _ arguments: [String], environment: [String: String]? = nil,
                stdin: Stream = .null, stdout: Stream = .inherit, stderr: Stream = .inherit,
                newProcessGroup: Bool = false) throws(SystemError) {
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        var pipeFDs: [Int32] = [-1, -1]
        let wantsPipe: Bool = {
            if case .pipe = stdout { return true }
            if case .pipe = stderr { return true }
            return false
        }()
        if wantsPipe {
            _ = try Sys.retrying("pipe for \(path)") { pipeFDs.withUnsafeMutableBufferPointer { linuxPipe2($0.baseAddress!, O_CLOEXEC) } }
        }
        func plan(_ s: Stream, _ target: Int32, readable: Bool) {
            switch s {
            case .inherit: break
            case .null: posix_spawn_file_actions_addopen(&actions, target, "/dev/null", readable ? O_RDONLY : O_WRONLY, 0)
            case .file(let p): posix_spawn_file_actions_addopen(&actions, target, p, readable ? O_RDONLY : O_WRONLY | O_CREAT | O_APPEND, 0o644)
            case .pipe: posix_spawn_file_actions_adddup2(&actions, pipeFDs[1], target)
            }
        }
        plan(stdin, 0, readable: true)
        plan(stdout, 1, readable: false)
        plan(stderr, 2, readable: false)

        var attr = posix_spawnattr_t()
        posix_spawnattr_init(&attr)
        defer { posix_spawnattr_destroy(&attr) }
        var empty = sigset_t()
        sigemptyset(&empty)
        posix_spawnattr_setsigmask(&attr, &empty)
        var defaults = sigset_t()
        sigemptyset(&defaults)
        for s in [SIGPIPE, SIGTERM, SIGINT, SIGCHLD] { sigaddset(&defaults, s) }
        posix_spawnattr_setsigdefault(&attr, &defaults)
        var flags = Int32(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF)
        if newProcessGroup {
            flags |= Int32(POSIX_SPAWN_SETPGROUP)
            posix_spawnattr_setpgroup(&attr, 0)
        }
        posix_spawnattr_setflags(&attr, Int16(flags))

        let argv = ([path] + arguments).map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        let env: [UnsafeMutablePointer<CChar>?]? = environment.map { e in e.map { strdup("\($0.key)=\($0.value)") } + [nil] }
        defer { env?.forEach { free($0) } }
        var child: pid_t = 0
        let rc: Int32 = argv.withUnsafeBufferPointer { a in
            if let env {
                return env.withUnsafeBufferPointer { e in posix_spawn(&child, path, &actions, &attr, a.baseAddress!, e.baseAddress!) }
            }
            return posix_spawn(&child, path, &actions, &attr, a.baseAddress!, environ)
        }
        if wantsPipe { Sys.close(pipeFDs[1]) }
        guard rc == 0 else {
            if wantsPipe { Sys.close(pipeFDs[0]) }
            throw SystemError(errno: rc, operation: "spawn \(path)")
        }
        pid = child
        outputFD = wantsPipe ? pipeFDs[0] : nil
        exitState = Monitor(nil)
    }

    deinit { if let outputFD { Sys.close(outputFD) } }

    /// Reaps the child if it has exited; never blocks.
    public var exit: Exit? { reap(blocking: false) }
    public var isRunning: Bool { exit == nil }

    private func reap(blocking: Bool) -> Exit? {
        exitState.withLock { (known: inout Exit?) -> Exit? in
            if let known { return known }
            var status: Int32 = 0
            var r: pid_t
            repeat { r = waitpid(pid, &status, blocking ? 0 : WNOHANG) } while r < 0 && errno == EINTR
            guard r == pid else { return nil }
            let low = status & 0x7f
            known = low == 0 ? Exit(code: (status >> 8) & 0xff, signal: nil) : Exit(code: 128 + low, signal: low)
            return known
        }
    }

    /// Waits for the exit, at most `timeoutMs` (nil: forever). Returns nil on timeout.
    @discardableResult
    public func wait(timeoutMs: Int? = nil) -> Exit? {
        guard let timeoutMs else { return reap(blocking: true) }
        let deadline = Clock.monotonicMs() + Int64(timeoutMs)
        var pause: UInt32 = 1_000
        while true {
            if let e = reap(blocking: false) { return e }
            if Clock.monotonicMs() >= deadline { return nil }
            usleep(pause)
            pause = min(pause * 2, 50_000)
        }
    }

    /// Sends `signal` to the child, or to its whole group when it leads one. A group is
    /// signalled even after its leader exited and was reaped: a grandchild still holding the
    /// output pipe is exactly what a timeout must reach, and a process group's id is not reused
    /// while any member lives. A lone pid is signalled only while unreaped, since a reaped
    /// pid may already name somebody else.
    public func kill(_ signal: Int32 = SIGKILL, group: Bool = false) {
        if group {
            _ = Glibc.kill(-pid, signal)
        } else if isRunning {
            _ = Glibc.kill(pid, signal)
        }
    }

    /// SIGTERM, then SIGKILL after `graceMs`; returns how it ended.
    @discardableResult
    public func stop(graceMs: Int = 10_000) -> Exit {
        if let e = exit { return e }
        kill(SIGTERM)
        if let e = wait(timeoutMs: graceMs) { return e }
        kill(SIGKILL)
        return wait()!
    }

    /// Reads the output pipe to its end or until the deadline; at the deadline the child
    /// (and its group, if it leads one) is killed, so a hung command cannot hang the caller.
    public func collectOutput(deadlineMs: Int64, group: Bool = false) -> (output: [UInt8], timedOut: Bool) {
        guard let fd = outputFD else { return ([], false) }
        var out: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 16384)
        while true {
            let left = deadlineMs - Clock.monotonicMs()
            if left <= 0 {
                kill(SIGKILL, group: group)
                return (out, true)
            }
            guard (try? Sys.poll(fd, events: Int16(POLLIN), timeoutMs: Int32(min(left, 1000)), "output of \(pid)")) == true else { continue }
            let n = (try? buf.withUnsafeMutableBytes { (b) throws(SystemError) in try Sys.read(fd, b, "output of \(pid)") }) ?? 0
            if n <= 0 { return (out, false) }
            out += buf[0..<n]
        }
    }

    /// Runs a command to completion with its stdout and stderr collected together, bounded by
    /// `timeoutMs`: the child is killed (its group too) when time runs out.
    public static func run(_ path: String, _ arguments: [String], environment: [String: String]? = nil,
                           stdin: Stream = .null, timeoutMs: Int) throws(SystemError) -> (exit: Exit, output: String, timedOut: Bool) {
        let p = try Subprocess(path, arguments, environment: environment, stdin: stdin, stdout: .pipe, stderr: .pipe, newProcessGroup: true)
        let (bytes, timedOut) = p.collectOutput(deadlineMs: Clock.monotonicMs() + Int64(timeoutMs), group: true)
        let exit = p.wait(timeoutMs: 5_000) ?? { p.kill(SIGKILL); return p.wait()! }()
        return (exit, String(decoding: bytes, as: UTF8.self), timedOut)
    }
}
