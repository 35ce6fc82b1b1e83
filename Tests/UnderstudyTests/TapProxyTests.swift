import Foundation
import JournalWire
import MemcacheClient
import MemcacheProtocol
import Testing
import UnderstudyPosix
import WriteTap

@Suite("tap proxy with real clients", .serialized)
struct TapProxyTests {
    @Test func pymemcacheMutationsAreJournaledInOrder() throws {
        let h = try TapHarness()
        let script = """
            from pymemcache.client.base import Client
            c = Client(("127.0.0.1", \(h.proxy.port)), default_noreply=False)
            c.set("a", b"1")
            c.add("b", b"2")
            c.add("b", b"x")          # NOT_STORED: no record
            c.replace("a", b"3")
            c.append("a", b"4")
            c.prepend("a", b"5")
            v, cas = c.gets("a")
            c.cas("a", b"6", cas)
            c.cas("a", b"7", cas)     # EXISTS: no record
            c.incr("n", 1)            # NOT_FOUND: no record
            c.set("n", b"10")
            c.incr("n", 5)
            c.decr("n", 1)
            c.touch("n", 100)
            c.touch("missing", 100)   # NOT_FOUND: no record
            c.delete("b")
            c.delete("b")             # NOT_FOUND: no record
            c.set("q", b"nr", noreply=True)
            c.get("a")
            c.gat("a", 60) if hasattr(c, "gat") else None
            c.flush_all()
            print("done", c.get("a"))
            """
        let python = try Paths.pythonWithPymemcache()
        let out = try runTool(python, ["-c", script])
        #expect(out.contains("done None"))
        var want: [(RecordOp, String)] = [(.write, "a"), (.write, "b"), (.write, "a"), (.write, "a"), (.write, "a"), (.write, "a"),
                                          (.write, "n"), (.write, "n"), (.write, "n"), (.touch, "n"), (.delete, "b"), (.write, "q")]
        let hasGat = out.contains("done") && (try? runTool(python, ["-c", "from pymemcache.client.base import Client; print(hasattr(Client, 'gat'))"]))?.contains("True") == true
        if hasGat { want.append((.touch, "a")) }
        want.append((.flush, "0"))
        let got = h.waitForRecords(want.count)
        #expect(got.map { "\($0.0) \($0.1)" } == want.map { "\($0.0) \($0.1)" })
    }

    @Test func recordIsEmittedOnlyAfterMemcachedAcknowledged() throws {
        let h = try TapHarness()
        let memcached = h.memcached.endpoint
        let stop = Monitor(false)
        let violations = Monitor<[String]>([])
        let checked = Monitor(0)
        // Watch the journal: every record's key must already hold its (only) value.
        let watcher = Thread {
            guard let direct = try? MemcacheConnection(memcached) else { return }
            var seen = 0
            while !stop.withLock({ $0 }) {
                let recs = h.records()
                for r in recs.dropFirst(seen) {
                    let got = (try? direct.get(Array(r.1.utf8)))??.value
                    if got != Array("value-of-\(r.1)".utf8) { violations.update { $0.append(r.1) } }
                    checked.update { $0 += 1 }
                }
                seen = recs.count
                usleep(200)
            }
        }
        watcher.start()
        let c = try MemcacheConnection(h.endpoint)
        for i in 0..<2000 { try c.set(Array("once\(i)".utf8), Array("value-of-once\(i)".utf8)) }
        _ = waitUntil(10) { checked.withLock { $0 } >= 2000 }
        stop.update { $0 = true }
        #expect(checked.withLock { $0 } == 2000)
        #expect(violations.withLock { $0 }.isEmpty, "records seen before memcached held the value: \(violations.withLock { $0 }.prefix(5))")
    }

    @Test func noreplyFloodIsFullyJournaled() throws {
        let h = try TapHarness()
        var req: [UInt8] = []
        for i in 0..<20_000 { req += Array("set nr\(i) 0 0 3 noreply\r\nabc\r\n".utf8) }
        req += Array("get nr19999\r\n".utf8)
        let out = try converse(h.endpoint, req, until: "END\r\n")
        #expect(out == "VALUE nr19999 0 3\r\nabc\r\nEND\r\n")
        let recs = h.waitForRecords(20_000)
        #expect(recs.count == 20_000)
        #expect(Set(recs.map(\.1)).count == 20_000)
    }

    @Test func metaQuietBatchesAreFencedAndJournaled() throws {
        let h = try TapHarness()
        var req: [UInt8] = []
        for i in 0..<100 { req += Array("ms mq\(i) 1 T0 q\r\nx\r\n".utf8) }
        req += Array("md mq0 q\r\nmg mq1 v q\r\nmg nothere v q\r\nma ctr N0 J5 q\r\nmn\r\n".utf8)
        let out = try converse(h.endpoint, req, until: "MN\r\n")
        // memcached 1.6.18 answers `ma ... q` with HD even when quiet; relayed as is.
        #expect(out == "VA 1\r\nx\r\nHD\r\nMN\r\n")
        let recs = h.waitForRecords(102)
        #expect(recs.count == 102)
        #expect(recs.last.map { "\($0.0) \($0.1)" } == "write ctr")
        #expect(recs.contains { $0.0 == .delete && $0.1 == "mq0" })
        // A quiet batch with no closing mn is fenced by the tap itself when the client idles.
        let c = try Socket.connect(to: h.endpoint, timeoutMs: 1000)
        try c.write(Array("ms idle1 1 q\r\ny\r\n".utf8))
        #expect(waitUntil(5) { h.records().contains { $0.1 == "idle1" } })
        c.close()
    }

    @Test func binaryProtocolWithQuietOpsThroughMemccpAndMemccat() throws {
        let h = try TapHarness()
        guard let memccp = Paths.which("memccp"), let memccat = Paths.which("memccat") else {
            throw TestFailure("libmemcached-tools (memccp, memccat) not installed")
        }
        let dir = Paths.tempDir("memccp")
        let file = dir + "/payload.bin"
        let payload = Data((0..<3000).map { UInt8(truncatingIfNeeded: $0 &* 31) })
        try payload.write(to: URL(fileURLWithPath: file))
        try runTool(memccp, ["--servers=\(h.address)", "--binary", file])
        try runTool(memccp, ["--servers=\(h.address)", file])
        let printable = dir + "/note.txt"
        try Data("hello through the tap".utf8).write(to: URL(fileURLWithPath: printable))
        try runTool(memccp, ["--servers=\(h.address)", "--binary", printable])
        #expect(try runTool(memccat, ["--servers=\(h.address)", "--binary", "note.txt"]) == "hello through the tap\n", "memccat prints the value and a newline")
        #expect(try runTool(memccat, ["--servers=\(h.address)", "note.txt"]) == "hello through the tap\n", "memccat prints the value and a newline")
        let direct = try h.memcached.connect()
        #expect(try direct.get(Array("payload.bin".utf8))?.value == Array(payload))
        let recs = h.waitForRecords(3)
        #expect(recs.filter { $0.1 == "payload.bin" && $0.0 == .write }.count == 2)
        #expect(recs.filter { $0.1 == "note.txt" && $0.0 == .write }.count == 1)
    }

    @Test func binaryQuietSetsAreFencedExactly() throws {
        let h = try TapHarness()
        func packet(_ op: UInt8, key: String, value: [UInt8] = [], extras: [UInt8] = [], opaque: UInt32) -> [UInt8] {
            let k = Array(key.utf8)
            let hdr = BinaryHeader(magic: 0x80, opcode: op, keyLength: UInt16(k.count), extrasLength: UInt8(extras.count),
                                   bodyLength: UInt32(extras.count + k.count + value.count), opaque: opaque)
            return hdr.encode() + extras + k + value
        }
        let setExtras: [UInt8] = [0, 0, 0, 7, 0, 0, 0, 0]
        var req: [UInt8] = []
        for i in 0..<50 { req += packet(0x11, key: "bq\(i)", value: [1, 2], extras: setExtras, opaque: UInt32(i)) }
        // REPLACEQ of a missing key fails: its error comes back and it must not be journaled.
        req += packet(0x13, key: "absent", value: [1], extras: setExtras, opaque: 999)
        req += packet(0x0a, key: "", opaque: 1000)
        let s = try Socket.connect(to: h.endpoint, timeoutMs: 1000)
        defer { s.close() }
        try s.setIOTimeout(milliseconds: 5000)
        try s.write(req)
        let stream = ByteStream(s)
        let first = BinaryHeader(parsing: try stream.readExact(24))
        _ = try stream.readExact(Int(first.bodyLength))
        #expect(first.opaque == 999 && first.status == BinaryPacket.Status.keyNotFound)
        let noop = BinaryHeader(parsing: try stream.readExact(24))
        #expect(noop.opcode == 0x0a && noop.opaque == 1000)
        let recs = h.waitForRecords(50)
        #expect(recs.count == 50)
        #expect(!recs.contains { $0.1 == "absent" })
    }

    /// PHP's memcached session handler, over TCP in both protocols, and in its default
    /// (binary) one over the tap's Unix socket, as a `session.save_path` of a socket path.
    @Test(arguments: [(true, false), (false, false), (true, true)])
    func phpSessionHandler(binary: Bool, unixSocket: Bool) throws {
        let h = try TapHarness(unixSocket: unixSocket)
        guard let php = Paths.which("php") else { throw TestFailure("php-cli not installed") }
        let script = """
            ini_set('session.save_handler', 'memcached');
            ini_set('session.save_path', '\(unixSocket ? h.socketPath : h.address)');
            ini_set('memcached.sess_binary_protocol', '\(binary ? 1 : 0)');
            ini_set('memcached.sess_locking', '1');
            session_id('understudytest\(binary ? "bin" : "txt")');
            session_start();
            $_SESSION['cart'] = ['apples' => 3];
            session_write_close();
            session_start();
            echo json_encode($_SESSION), "\\n";
            $_SESSION['cart']['pears'] = 1;
            session_write_close();
            """
        let out = try runTool(php, ["-r", script])
        #expect(out.contains("\"apples\":3"), "PHP output: \(out)")
        let id = "understudytest\(binary ? "bin" : "txt")"
        let direct = try h.memcached.connect()
        let stored = try #require(try direct.get(Array("memc.sess.key.\(id)".utf8)))
        #expect(String(decoding: stored.value, as: UTF8.self).contains("pears"))
        // Each session_start takes the lock (add), session_write_close writes and unlocks.
        let cycle = ["write memc.sess.key.lock.\(id)", "write memc.sess.key.\(id)", "delete memc.sess.key.lock.\(id)"]
        let recs = h.waitForRecords(6)
        #expect(recs.map { "\($0.0) \($0.1)" } == cycle + cycle)
    }

    /// The tap's Unix socket: made with the mode asked for, serving pymemcache like the TCP
    /// port does (journaled after memcached's ack, errors answered as memcached would), and
    /// removed when the tap stops.
    @Test func pymemcacheThroughTheUnixSocket() throws {
        let h = try TapHarness(unixSocket: true, socketMode: 0o660)
        var st = stat()
        #expect(lstat(h.socketPath, &st) == 0)
        #expect(st.st_mode & S_IFMT == S_IFSOCK)
        #expect(st.st_mode & 0o777 == 0o660)
        let script = """
            from pymemcache.client.base import Client
            c = Client("\(h.socketPath)", default_noreply=False)
            c.set("u1", b"one")
            c.add("u1", b"x")         # NOT_STORED: no record
            c.delete("u2")            # NOT_FOUND: no record
            c.set("u2", b"two")
            print("got", c.get("u1"), c.get("u2"))
            """
        let out = try runTool(try Paths.pythonWithPymemcache(), ["-c", script])
        #expect(out.contains("got b'one' b'two'"), "python output: \(out)")
        let recs = h.waitForRecords(2)
        #expect(recs.map { "\($0.0) \($0.1)" } == ["write u1", "write u2"])
        // Bad input over the socket gets memcached's answers: an unknown command, a key over
        // 250 bytes; and the connection still serves after them.
        let c = try Socket.connect(unixPath: h.socketPath)
        defer { c.close() }
        try c.setIOTimeout(milliseconds: 5000)
        try c.write(Array("bogus\r\nget \(String(repeating: "k", count: 251))\r\nget u1\r\n".utf8))
        let reply = String(decoding: try readFrom(c) { String(decoding: $0, as: UTF8.self).hasSuffix("END\r\n") }, as: UTF8.self)
        #expect(reply.hasPrefix("ERROR\r\nCLIENT_ERROR "), "reply: \(reply)")
        #expect(reply.hasSuffix("VALUE u1 0 3\r\none\r\nEND\r\n"), "reply: \(reply)")
        h.proxy.stop()
        #expect(lstat(h.socketPath, &st) != 0 && errno == ENOENT, "the socket file outlived the tap")
    }
}
