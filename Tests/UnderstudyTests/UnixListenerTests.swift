import Foundation
import Testing
import UnderstudyPosix

/// Unix socket listeners (the tap's socket, the daemon's control socket): what happens to a
/// path that already holds something, and to the file when the listener closes.
@Suite("Unix socket listeners")
struct UnixListenerTests {
    let path = Paths.tempDir("unixlisten") + "/s.sock"

    /// A listener whose process died: its file stays, nobody accepts on it.
    func crashedListener() throws -> Listener {
        let l = try Listener.unix(path: path)
        l.socket.close()
        return l
    }

    /// Which file is at `p`: inode and change time (a freed inode number is soon reused).
    func inode(_ p: String) -> String? {
        var st = stat()
        return lstat(p, &st) == 0 ? "\(st.st_ino) \(st.st_ctim.tv_sec).\(st.st_ctim.tv_nsec)" : nil
    }

    @Test func aStaleSocketFileIsReplaced() throws {
        let dead = try crashedListener()
        let stale = try #require(inode(path))
        let l = try Listener.unix(path: path)
        defer { l.close() }
        #expect(inode(path) != stale)
        let c = try Socket.connect(unixPath: path)
        defer { c.close() }
        _ = try l.accept()
        // The dead listener's close must not take the new one's file with it.
        dead.close()
        #expect(inode(path) != nil)
    }

    @Test func aLiveListenersSocketIsNotStolen() throws {
        let live = try Listener.unix(path: path)
        defer { live.close() }
        do {
            let second = try Listener.unix(path: path)
            second.close()
            Issue.record("a second listener took a live listener's path")
        } catch {
            #expect(error.errno == EADDRINUSE)
            #expect(error.description.contains(path))
        }
        let c = try Socket.connect(unixPath: path)
        defer { c.close() }
        _ = try live.accept()
    }

    @Test func aPathThatIsNotASocketIsLeftAlone() throws {
        try "operator's notes".write(toFile: path, atomically: false, encoding: .utf8)
        #expect(throws: SystemError(errno: EEXIST, operation: "listen on \(path): the path exists and is not a socket")) {
            try Listener.unix(path: path)
        }
        #expect(try String(contentsOfFile: path, encoding: .utf8) == "operator's notes")
    }

    @Test func closingRemovesTheSocketFile() throws {
        let l = try Listener.unix(path: path, mode: 0o660)
        var st = stat()
        #expect(lstat(path, &st) == 0 && st.st_mode & 0o777 == 0o660)
        l.close()
        #expect(inode(path) == nil)
        l.close()  // twice is harmless
    }

    @Test func listenAddressesParse() throws {
        #expect(try ListenAddress(parsing: "127.0.0.1:11212") == .tcp(Endpoint(host: "127.0.0.1", port: 11212)))
        #expect(try ListenAddress(parsing: "/run/understudy/tap.sock") == .unix(path: "/run/understudy/tap.sock"))
        #expect(try ListenAddress.list(parsing: "127.0.0.1:1,/run/t.sock") == [.tcp(Endpoint(host: "127.0.0.1", port: 1)), .unix(path: "/run/t.sock")])
        #expect(try ListenAddress(parsing: "0.0.0.0:1").isWildcard)
        #expect(try !ListenAddress(parsing: "/0.0.0.0:1").isWildcard)
        let tooLong = "/" + String(repeating: "d", count: ListenAddress.maxUnixPathBytes)
        for bad in ["tap.sock", "run/tap.sock", "/run/", tooLong, "h:0", "", "127.0.0.1:1,", "/a.sock,/a.sock"] {
            #expect(throws: ListenAddress.ParseError.self, "\(bad)") { try ListenAddress.list(parsing: bad) }
        }
    }
}
