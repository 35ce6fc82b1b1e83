import Glibc

/// File helpers for state that must survive a crash intact.
public enum Files {
    /// Writes `bytes` to `path` atomically: temp file, fsync, rename, fsync of the directory.
    /// A crash leaves either the old file or the new one, never a torn mix; a full disk
    /// surfaces as ENOSPC from write or fsync, with the old file untouched.
    public static func writeAtomically(_ bytes: [UInt8], to path: String, mode: mode_t = 0o600) throws(SystemError) {
        let tmp = path + ".tmp"
        let fd = try Sys.open(tmp, O_WRONLY | O_CREAT | O_TRUNC, mode)
        do {
            try writeAll(fd, bytes, what: tmp)
            try Sys.fsync(fd, tmp)
        } catch {
            Sys.close(fd)
            Sys.unlink(tmp)
            throw error
        }
        Sys.close(fd)
        try Sys.rename(tmp, path)
        let dir = directory(of: path)
        if let dfd = try? Sys.open(dir, O_RDONLY | O_DIRECTORY) {
            try? Sys.fsync(dfd, dir)
            Sys.close(dfd)
        }
    }

    /// Appends and fsyncs: used for the recovery file, where every line matters.
    public static func appendDurably(_ bytes: [UInt8], to path: String, mode: mode_t = 0o600) throws(SystemError) {
        let fd = try Sys.open(path, O_WRONLY | O_CREAT | O_APPEND, mode)
        defer { Sys.close(fd) }
        try writeAll(fd, bytes, what: path)
        try Sys.fsync(fd, path)
    }

    static func writeAll(_ fd: Int32, _ bytes: [UInt8], what: String) throws(SystemError) {
        try bytes.withUnsafeBytes { raw in
            Result { () throws(SystemError) in
                var off = 0
                while off < raw.count {
                    let n = try Sys.write(fd, UnsafeRawBufferPointer(rebasing: raw[off...]), what)
                    if n == 0 { throw SystemError(errno: EIO, operation: "write \(what) (wrote 0 bytes)") }
                    off += n
                }
            }
        }.get()
    }

    public static func read(_ path: String) throws(SystemError) -> [UInt8] {
        let fd = try Sys.open(path, O_RDONLY)
        defer { Sys.close(fd) }
        var out: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 64 * 1024)
        while true {
            let n = try chunk.withUnsafeMutableBytes { raw in Result { () throws(SystemError) in try Sys.read(fd, raw, path) } }.get()
            if n == 0 { return out }
            out.append(contentsOf: chunk[0..<n])
        }
    }

    public static func exists(_ path: String) -> Bool { access(path, F_OK) == 0 }

    public static func directory(of path: String) -> String {
        guard let slash = path.lastIndex(of: "/") else { return "." }
        return slash == path.startIndex ? "/" : String(path[..<slash])
    }
}
