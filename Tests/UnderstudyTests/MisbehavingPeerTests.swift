import Foundation
import MemcacheClient
import Testing
import UnderstudyPosix

/// A tiny TCP peer that answers every connection with a script, to produce faults a real
/// memcached will not: truncated replies, garbage, stalls, a vanishing server.
final class ScriptedPeer: @unchecked Sendable {
    let listener: Listener
    let script: @Sendable (Socket) -> Void

    init(_ script: @escaping @Sendable (Socket) -> Void) throws {
        listener = try Listener.tcp(Endpoint(host: "127.0.0.1", port: 0))
        self.script = script
        let listener = self.listener
        Threads.start("scripted-peer") {
            while let s = try? listener.accept() {
                Threads.start("scripted-conn") {
                    script(s)
                    s.close()
                }
            }
        }
    }

    var endpoint: Endpoint { Endpoint(host: "127.0.0.1", port: listener.port) }
    deinit { listener.close() }

    static func reply(_ text: String, after: Int = 0) -> @Sendable (Socket) -> Void {
        { s in
            var buf = [UInt8](repeating: 0, count: 4096)
            _ = buf.withUnsafeMutableBytes { try? s.read(into: $0) }
            if after > 0 { Clock.sleep(milliseconds: after) }
            try? s.write(Array(text.utf8))
        }
    }
}

@Suite("client against a misbehaving peer")
struct MisbehavingPeerTests {
    @Test func truncatedValueIsATypedError() throws {
        let peer = try ScriptedPeer(ScriptedPeer.reply("VALUE k 0 10\r\nabc"))
        let c = try MemcacheConnection(peer.endpoint, ioTimeoutMs: 2000)
        #expect(throws: MemcacheError.transport(.closed(peer: peer.endpoint.description))) { try c.get(Array("k".utf8)) }
    }

    @Test func garbageIsMalformedNotACrash() throws {
        let peer = try ScriptedPeer(ScriptedPeer.reply("HELLO THERE\r\n"))
        let c = try MemcacheConnection(peer.endpoint, ioTimeoutMs: 2000)
        #expect(throws: MemcacheError.self) { try c.get(Array("k".utf8)) }
        let peer2 = try ScriptedPeer(ScriptedPeer.reply("VA zz\r\n"))
        let c2 = try MemcacheConnection(peer2.endpoint, ioTimeoutMs: 2000)
        #expect(throws: MemcacheError.protocolError(.malformed("VA zz"))) { try c2.meta(.get(Array("k".utf8), ["v"])) }
        let peer3 = try ScriptedPeer(ScriptedPeer.reply("VALUE k 0 2\r\nabXY"))
        let c3 = try MemcacheConnection(peer3.endpoint, ioTimeoutMs: 2000)
        #expect(throws: MemcacheError.protocolError(.malformed("data block not terminated by CRLF"))) { try c3.get(Array("k".utf8)) }
    }

    @Test func endlessLineIsBounded() throws {
        let peer = try ScriptedPeer { s in
            var buf = [UInt8](repeating: 0, count: 4096)
            _ = buf.withUnsafeMutableBytes { try? s.read(into: $0) }
            for _ in 0..<64 { try? s.write([UInt8](repeating: 0x41, count: 1024)) }
        }
        let c = try MemcacheConnection(peer.endpoint, ioTimeoutMs: 2000)
        #expect(throws: MemcacheError.transport(.lineTooLong(peer: peer.endpoint.description, limit: 8192))) { try c.version() }
    }

    @Test func slowPeerTimesOut() throws {
        let peer = try ScriptedPeer(ScriptedPeer.reply("VERSION 1\r\n", after: 3000))
        let c = try MemcacheConnection(peer.endpoint, ioTimeoutMs: 300)
        let start = Clock.monoNanos()
        #expect(throws: MemcacheError.transport(.timeout(peer: peer.endpoint.description))) { try c.version() }
        #expect(Clock.monoNanos() - start < 2_500_000_000, "the I/O timeout must cut the wait short")
    }

    @Test func vanishingServerIsClosed() throws {
        let peer = try ScriptedPeer { _ in }
        let c = try MemcacheConnection(peer.endpoint, ioTimeoutMs: 2000)
        #expect(throws: MemcacheError.self) { try c.stats() }
    }

    @Test func refusedAndUnresolvableConnects() {
        let port = Ports.free()
        #expect(throws: MemcacheError.self) { try MemcacheConnection(Endpoint(host: "127.0.0.1", port: port)) }
        #expect(throws: MemcacheError.self) { try MemcacheConnection(Endpoint(host: "no-such-host.invalid", port: 1)) }
    }
}

@Suite("POSIX layer")
struct PosixTests {
    @Test func endpointParsing() throws {
        #expect(try Endpoint(parsing: "127.0.0.1:11211") == Endpoint(host: "127.0.0.1", port: 11211))
        #expect(try Endpoint(parsing: "[::1]:5").host == "::1")
        #expect(try Endpoint(parsing: "[::1]:5").description == "[::1]:5")
        #expect(try Endpoint(parsing: "localhost:7").isLoopback)
        #expect(try Endpoint(parsing: "0.0.0.0:1").isWildcard)
        for bad in ["", "host", "host:", ":1", "h:0", "h:70000", "::1:5", "[::1]5"] {
            #expect(throws: Endpoint.ParseError.self) { try Endpoint(parsing: bad) }
        }
    }

    @Test func systemErrorsCarryErrnoAndContext() throws {
        do {
            _ = try Files.read("/nonexistent/understudy")
            Issue.record("reading a missing file must throw")
        } catch {
            #expect(error.errno == ENOENT)
            #expect(error.description.contains("open /nonexistent/understudy"))
        }
    }

    @Test func atomicWriteReplacesWholeFiles() throws {
        let dir = Paths.tempDir("files")
        let path = dir + "/state"
        try Files.writeAtomically(Array("one".utf8), to: path)
        try Files.writeAtomically(Array("two".utf8), to: path)
        #expect(try Files.read(path) == Array("two".utf8))
        #expect(!Files.exists(path + ".tmp"))
        var st = stat()
        stat(path, &st)
        #expect(st.st_mode & 0o777 == 0o600)
        #expect(throws: SystemError.self) { try Files.writeAtomically([1], to: "/nonexistent/dir/x") }
    }

    @Test func fullDiskIsATypedError() throws {
        // /dev/full reports ENOSPC on every write: the state file and recovery file paths
        // must surface it, not crash or pretend.
        do {
            try Files.appendDurably(Array("x".utf8), to: "/dev/full")
            Issue.record("writing to /dev/full must fail")
        } catch {
            #expect(error.errno == ENOSPC)
        }
    }

    @Test func unixSocketIsMode0600() throws {
        let path = Paths.tempDir("unix") + "/c.sock"
        let l = try Listener.unix(path: path)
        defer { l.close() }
        var st = stat()
        #expect(stat(path, &st) == 0)
        #expect(st.st_mode & 0o777 == 0o600)
        let c = try Socket.connect(unixPath: path)
        let s = try l.accept()
        #expect(Listener.peerUID(s) == getuid())
        c.close()
    }
}
