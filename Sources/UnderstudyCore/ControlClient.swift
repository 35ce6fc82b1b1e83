import UnderstudyPosix

/// The client side of the control socket (`ControlServer`): one request line, one reply line.
///
/// In the library, not only the CLI, so the benchmark can poll a daemon's status without
/// spawning `understudy status` each time: a process start costs milliseconds of CPU, and on
/// a 2-core machine polling that way stole a measurable share from the run being measured.
public enum ControlClient {
    /// Sends `command` and returns the daemon's reply line (`OK …`, `ERR …`, or status JSON).
    public static func request(_ command: String, path: String, timeoutMs: Int = 30_000) throws(StreamError) -> String {
        let s: Socket
        do {
            s = try Socket.connect(unixPath: path)
            try s.setIOTimeout(milliseconds: timeoutMs)
        } catch {
            throw .system(error)
        }
        defer { s.close() }
        let stream = ByteStream(s, capacity: 65536)
        stream.write(command + "\n")
        try stream.flush()
        return String(decoding: try stream.readLineLF(limit: 1 << 20), as: UTF8.self)
    }
}
