import Glibc
import Synchronization

/// Line-oriented logs on stderr, one `write(2)` per line so threads never interleave.
/// Format: `2026-11-22T01:02:03.456Z LEVEL component: message`.
public enum Log {
    public enum Level: Int, Sendable, Comparable {
        case debug = 0, info, warning, error
        public static func < (a: Level, b: Level) -> Bool { a.rawValue < b.rawValue }
        var name: String { ["DEBUG", "INFO", "WARN", "ERROR"][rawValue] }
    }

    private static let minimum = Atomic<Int>(Level.info.rawValue)

    public static func setLevel(_ l: Level) { minimum.store(l.rawValue, ordering: .relaxed) }

    public static func debug(_ c: String, _ m: @autoclosure () -> String) { emit(.debug, c, m) }
    public static func info(_ c: String, _ m: @autoclosure () -> String) { emit(.info, c, m) }
    public static func warning(_ c: String, _ m: @autoclosure () -> String) { emit(.warning, c, m) }
    public static func error(_ c: String, _ m: @autoclosure () -> String) { emit(.error, c, m) }

    static func emit(_ level: Level, _ component: String, _ message: () -> String) {
        guard level.rawValue >= minimum.load(ordering: .relaxed) else { return }
        line("\(timestamp()) \(level.name) \(component): \(message())")
    }

    /// Writes `text` and a newline to stderr in one `write(2)`. A failed write is ignored on
    /// purpose: a reader that went away (`| head`) must not kill the process mid-run, which
    /// Foundation's `FileHandle.write` does, and leave what it started running.
    public static func line(_ text: String) {
        let bytes = Array((text + "\n").utf8)
        bytes.withUnsafeBytes { raw in _ = Glibc.write(2, raw.baseAddress, raw.count) }
    }

    static func timestamp() -> String {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        var t = ts.tv_sec
        var tmv = tm()
        gmtime_r(&t, &tmv)
        func p(_ v: Int32, _ w: Int = 2) -> String {
            let s = String(v)
            return String(repeating: "0", count: max(0, w - s.count)) + s
        }
        return "\(p(tmv.tm_year + 1900, 4))-\(p(tmv.tm_mon + 1))-\(p(tmv.tm_mday))T\(p(tmv.tm_hour)):\(p(tmv.tm_min)):\(p(tmv.tm_sec)).\(p(Int32(ts.tv_nsec / 1_000_000), 3))Z"
    }
}
