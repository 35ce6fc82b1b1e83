import JournalWire
@testable import MemcacheProtocol
import Testing
import UnderstudyPosix
@testable import UnderstudyCore

@Suite("memcached codec (no sockets)")
struct CodecTests {
    @Test func keyRules() throws {
        try Key.validate(Array(repeating: UInt8(ascii: "k"), count: 250))
        #expect(throws: ProtocolError.self) { try Key.validate(Array(repeating: UInt8(ascii: "k"), count: 251)) }
        #expect(throws: ProtocolError.self) { try Key.validate(Array("a b".utf8)) }
        #expect(throws: ProtocolError.self) { try Key.validate(Array("a\nb".utf8)) }
        #expect(throws: ProtocolError.self) { try Key.validate([]) }
        #expect(try Key.metaToken(Array("plain".utf8)).base64 == false)
        let bin = try Key.metaToken([0, 1, 2, 0xff, 0x20])
        #expect(bin.base64)
        #expect(Base64.decode(bin.token) == [0, 1, 2, 0xff, 0x20])
        #expect(throws: ProtocolError.self) { try Key.metaToken([UInt8](repeating: 0, count: 188)) }
    }

    @Test(arguments: [[], [1], [1, 2], [1, 2, 3], [0, 255, 128, 64, 32]] as [[UInt8]])
    func base64RoundTrip(_ bytes: [UInt8]) {
        #expect(Base64.decode(Base64.encode(bytes)) == bytes)
    }

    @Test func base64KnownValues() {
        #expect(String(decoding: Base64.encode(Array("foobar".utf8)), as: UTF8.self) == "Zm9vYmFy")
        #expect(String(decoding: Base64.encode(Array("fo".utf8)), as: UTF8.self) == "Zm8=")
        #expect(Base64.decode(Array("Zm8".utf8)) == nil)
        #expect(Base64.decode(Array("Z!8=".utf8)) == nil)
    }

    @Test func metadumpLines() throws {
        let e = try MetadumpEntry.parse(Array("key=a%20b%2Fc exp=-1 la=1 cas=2 fetch=no cls=1 size=63".utf8))
        #expect(e.key == Array("a b/c".utf8))
        #expect(e.expiry == nil)
        #expect(e.size == 63)
        #expect(!e.fetched)
        let f = try MetadumpEntry.parse(Array("key=k exp=1795308756 la=1 cas=2 fetch=yes cls=1 size=63".utf8))
        #expect(f.expiry == 1_795_308_756)
        #expect(f.fetched)
        #expect(f.cas == 2 && e.cas == 2)
        #expect(throws: ProtocolError.self) { try MetadumpEntry.parse(Array("key=%zz exp=1".utf8)) }
        #expect(throws: ProtocolError.self) { try MetadumpEntry.parse(Array("garbage".utf8)) }
    }

    @Test func expiryConversion() {
        let now: Int64 = 1_800_000_000
        #expect(Expiry.exptime(remaining: -1, now: now) == 0)
        #expect(Expiry.exptime(remaining: 3600, now: now) == 3600)
        #expect(Expiry.exptime(remaining: 0, now: now) == 1)
        #expect(Expiry.exptime(remaining: 40 * 86400, now: now) == now + 40 * 86400)
        #expect(Expiry.exptime(remaining: 2_592_000, now: now) == 2_592_000)
    }

    @Test func metaReplyHeaders() {
        let (va, len) = MetaReply.parseHeader(Array("VA 5 f7 t-1".utf8))
        #expect(va.status == .va && len == 5 && va.intFlag("f") == 7 && va.intFlag("t") == -1)
        #expect(MetaReply.parseHeader(Array("EN".utf8)).0.status == .en)
        #expect(MetaReply.parseHeader(Array("MN".utf8)).0.status == .mn)
        #expect(MetaReply.parseHeader(Array("SERVER_ERROR object too large for cache".utf8)).0.status == .error(.serverError("object too large for cache")))
        if case .error(.malformed) = MetaReply.parseHeader(Array("VA x".utf8)).0.status {} else { Issue.record("VA x must be malformed") }
        if case .error(.malformed) = MetaReply.parseHeader(Array("ZZ".utf8)).0.status {} else { Issue.record("ZZ must be malformed") }
        // Found by FuzzTests: a reply line of only spaces crashed the parser.
        if case .error(.malformed) = MetaReply.parseHeader(Array("  ".utf8)).0.status {} else { Issue.record("blank line must be malformed") }
    }

    @Test func valueHeaders() {
        func parse(_ s: String) -> ValueHeader? { ValueHeader.parse(Array(s.utf8)) }
        let a = parse("VALUE k 7 5")
        #expect(a?.key == Array("k".utf8) && a?.flags == 7 && a?.length == 5 && a?.cas == nil)
        let b = parse("VALUE  k  4294967295 0  99")
        #expect(b?.key == Array("k".utf8) && b?.flags == UInt32.max && b?.length == 0 && b?.cas == 99)
        for bad in ["", "VALUE", "VALUE k 1", "VALUE k 1 2 3 4", "VALUES k 1 2", "VALUE k x 2", "VALUE k 4294967296 2",
                    "VALUE k 1 -2", "VALUE k 1 2147483648", "VALUE k 1 2 x", "END"] {
            #expect(parse(bad) == nil, "\(bad)")
        }
    }
    @Test func metaRequestEncoding() throws {
        var out: [UInt8] = []
        try MetaRequest.set(Array("k".utf8), Array("abc".utf8), ["F5", "T60", "q"]).encode(into: &out)
        try MetaRequest.get([0xff, 0x00], ["v"]).encode(into: &out)
        try MetaRequest.noop.encode(into: &out)
        #expect(String(decoding: out, as: UTF8.self) == "ms k 3 F5 T60 q\r\nabc\r\nmg /wA= v b\r\nmn\r\n")
    }

    /// Every command name is recognized from its bytes, and nothing else is: no prefix, no
    /// longer word, no other case (memcached's names are case-sensitive).
    @Test func verbsMatchExactlyTheirNames() {
        func verb(_ s: String) -> Verb? { Array(s.utf8).withUnsafeBytes { Verb($0) } }
        for v in Verb.allCases {
            #expect(verb(v.name) == v, "\(v.name)")
            #expect(verb(v.name + "x") == nil, "\(v.name)x")
            let prefix = String(v.name.dropLast())  // "get" of "gets" is a command of its own
            #expect(verb(prefix) == Verb.allCases.first { $0.name == prefix }, "\(prefix)")
            #expect(verb(v.name.uppercased()) == nil, "\(v.name.uppercased())")
        }
        #expect(Set(Verb.allCases.map(\.name)).count == Verb.allCases.count)
        for junk in ["", "m", "mx", "sets", "flush-all", "cache_memlimits", "lru_crawle"] { #expect(verb(junk) == nil, "\(junk)") }
    }

    @Test func clientCommandClassification() {
        let max = 1 << 20
        func p(_ s: String) -> ClientCommand { ClientCommand.parse(Array(s.utf8), maxItemSize: max) }
        #expect(p("set k 1 2 3").effect == .write(Array("k".utf8)))
        #expect(p("set k 1 2 3").dataLength == 3)
        #expect(p("set k 1 2 3 noreply").quiet)
        #expect(p("cas k 0 0 1 99").effect == .write(Array("k".utf8)))
        #expect(p("delete k").effect == .delete(Array("k".utf8)))
        #expect(p("delete k 5").localReply != nil)
        #expect(p("incr k 1").effect == .write(Array("k".utf8)))
        #expect(String(decoding: p("incr k x").localReply ?? [], as: UTF8.self) == "CLIENT_ERROR invalid numeric delta argument\r\n")
        #expect(p("touch k 10").effect == .touch(Array("k".utf8)))
        #expect(p("gat 10 a b").effect == .touchHits)
        #expect(p("get a b").effect == nil)
        #expect(p("flush_all").effect == .flush(delay: []))
        #expect(p("flush_all 10").effect == .flush(delay: Array("10".utf8)))
        #expect(p("ms k 2 T0 q").quiet && p("ms k 2 T0 q").dataLength == 2)
        #expect(p("ms a2V5 2 b").effect == .write(Array("key".utf8)))
        #expect(p("mg k T30 v").effect == .metaGet(key: Array("k".utf8), touches: true, vivifies: false))
        #expect(p("md k q").effect == .delete(Array("k".utf8)))
        #expect(p("mn").isNoop)
        #expect(String(decoding: p("bogus").localReply ?? [], as: UTF8.self) == "ERROR\r\n")
        #expect(String(decoding: p("").localReply ?? [], as: UTF8.self) == "ERROR\r\n")
        let long = p("set " + String(repeating: "k", count: 251) + " 0 0 1")
        #expect(String(decoding: long.localReply ?? [], as: UTF8.self) == "CLIENT_ERROR bad command line format\r\n")
        #expect(long.dataLength == nil, "memcached does not swallow the data block after a bad key")
        let big = p("set k 0 0 \(max + 1)")
        #expect(String(decoding: big.localReply ?? [], as: UTF8.self) == "SERVER_ERROR object too large for cache\r\n")
        #expect(p("set k 0 0 -1").localReply != nil)
        #expect(p("set k x 0 1").localReply != nil)
    }

    @Test func binaryHeaderRoundTrip() {
        let h = BinaryHeader(magic: 0x80, opcode: 0x11, keyLength: 3, extrasLength: 8, status: 0, bodyLength: 16, opaque: 0xdead_beef, cas: 1 << 40)
        #expect(BinaryHeader(parsing: h.encode()) == h)
        #expect(BinaryPacket.isQuiet(0x11) && !BinaryPacket.isQuiet(0x01))
        #expect(BinaryPacket.effect(0x01) == .write && BinaryPacket.effect(0x14) == .delete && BinaryPacket.effect(0x00) == nil)
    }
}

@Suite("journal wire format")
struct JournalWireTests {
    @Test func sha256AndHMACVectors() {
        func hex(_ b: [UInt8]) -> String { b.map { String(format: "%02x", $0) }.joined() }
        #expect(hex(SHA256.hash(Array("abc".utf8))) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        #expect(hex(SHA256.hash([])) == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        // RFC 4231 test case 2.
        #expect(hex(HMAC.sha256(key: Array("Jefe".utf8), message: Array("what do ya want for nothing?".utf8)))
                == "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843")
        #expect(HMAC.equal([1, 2], [1, 2]) && !HMAC.equal([1, 2], [1, 3]) && !HMAC.equal([1], [1, 2]))
    }

    static let samples: [Message] = [
        .hello(version: 1, nonce: [UInt8](repeating: 7, count: 32), epoch: 9),
        .auth(kind: .tap, mac: [UInt8](repeating: 1, count: 32), nonce: [UInt8](repeating: 2, count: 32)),
        .authOK(mac: [UInt8](repeating: 3, count: 32)),
        .refused(reason: "no"),
        .tapStart(tapID: [1, 2, 3], wantsApplied: false), .tapStart(tapID: [4], wantsApplied: true),
        .tapWelcome(runID: 5, ackedSeq: 6),
        .records([TapRecord(seq: 1, op: .write, key: Array("a".utf8)), TapRecord(seq: 2, op: .flush, key: [])]),
        .tapAck(seq: 3), .tapApplied(seq: 4), .tapGap(fromSeq: 10, lost: 5), .syncState(followerInSync: true),
        .follow(runID: 1, applied: 2, epoch: 3), .resume(runID: 1, from: 3), .fullSync(runID: 1, from: 1),
        .stream([StreamRecord(offset: 9, stampNanos: -1, op: .gap, key: [])]),
        .followerAck(applied: 8), .ping(endOffset: 1, stampNanos: 2), .peerInfo(active: true, epoch: 4, runID: 5), .followerAlive,
    ]

    @Test(arguments: samples)
    func roundTrip(_ m: Message) throws {
        let frame = m.frame()
        let len = frame.prefix(4).reduce(0) { $0 << 8 | Int($1) }
        #expect(len == frame.count - 4)
        #expect(try Message.decode(Array(frame.dropFirst(4))) == m)
    }

    /// A tap encodes its shipments from its buffer in place, after whatever frames its output
    /// already holds: the bytes must be those of the same records sent as a message.
    @Test func recordsEncodedInPlaceMatchTheMessage() throws {
        var q = ChunkedQueue<TapRecord>()
        for i in 0..<(ChunkedQueue<TapRecord>.chunkSize + 10) {
            q.append(TapRecord(seq: UInt64(i + 1), op: i % 3 == 0 ? .delete : .write, key: Array("key-\(i)".utf8)))
        }
        let range = (ChunkedQueue<TapRecord>.chunkSize - 3)..<(ChunkedQueue<TapRecord>.chunkSize + 7)
        var out = Message.tapAck(seq: 1).frame()
        let before = out.count
        Message.appendRecordsFrame(q, range: range, to: &out)
        #expect(Array(out[before...]) == Message.records(Array(q[range])).frame())
        #expect(try Message.decode(Array(out[(before + 4)...])) == .records(Array(q[range])))
        #expect(Array(out[..<before]) == Message.tapAck(seq: 1).frame())
    }

    /// The keeper streams from its backlog the same way, and says when there is nothing new
    /// and when the follower's offset has fallen off.
    @Test func streamFramesFromTheBacklogInPlace() throws {
        var b = Backlog(limitBytes: 6000 * (Backlog.overheadPerRecord + 8))
        for i in 0..<10_000 { b.append(i % 2 == 0 ? .write : .touch, key: Array("k\(i)".utf8), stamp: Int64(i)) }
        var out: [UInt8] = []
        let from = b.firstOffset + 4090
        #expect(b.appendStreamFrame(from: from, max: 20, to: &out) == from + 20)
        #expect(out == Message.stream(b.read(from: from, max: 20)!).frame())
        out.removeAll()
        #expect(b.appendStreamFrame(from: b.nextOffset, max: 20, to: &out) == b.nextOffset)
        #expect(out.isEmpty)
        #expect(b.appendStreamFrame(from: b.firstOffset - 1, max: 20, to: &out) == nil)
        #expect(out.isEmpty)
    }

    @Test func malformedFramesAreTypedErrors() {
        #expect(throws: JournalError.self) { try Message.decode([0x99]) }
        #expect(throws: JournalError.self) { try Message.decode([0x13, 0, 0]) }
        #expect(throws: JournalError.self) { try Message.decode(Message.tapAck(seq: 1).frame().dropFirst(4) + [0]) }
        var badOp = Array(Message.records([TapRecord(seq: 1, op: .write, key: [1])]).frame().dropFirst(4))
        badOp[13] = 0x77
        #expect(throws: JournalError.self) { try Message.decode(badOp) }
        var hello = Array(Message.hello(version: 1, nonce: [UInt8](repeating: 0, count: 32), epoch: 0).frame().dropFirst(4))
        hello[4] = 2
        #expect(throws: JournalError.unsupportedVersion(2)) { try Message.decode(hello) }
    }

    @Test func backlogBoundsAndCoverage() {
        var b = Backlog(limitBytes: 10 * (Backlog.overheadPerRecord + 1))
        for i in 0..<25 { b.append(.write, key: [UInt8(i)], stamp: 0) }
        #expect(b.count == 10)
        #expect(b.firstOffset == 16 && b.lastOffset == 25)
        #expect(b.covers(16) && b.covers(26) && !b.covers(15))
        #expect(b.read(from: 15, max: 5) == nil)
        #expect(b.read(from: 24, max: 5)?.map(\.offset) == [24, 25])
        #expect(b.read(from: 26, max: 5) == [])
    }

    @Test func backlogAcrossManyChunks() {
        // Room for 10,000 one-byte-key records, fed 50,000: the oldest fall off a record at a
        // time while reads straddle the queue's chunk edges.
        var b = Backlog(limitBytes: 10_000 * (Backlog.overheadPerRecord + 1))
        for i in 0..<50_000 { b.append(.write, key: [UInt8(i & 0xff)], stamp: Int64(i)) }
        #expect(b.count == 10_000)
        #expect(b.firstOffset == 40_001 && b.lastOffset == 50_000)
        #expect(b.read(from: 40_000, max: 1) == nil)
        // Offsets start at 1, so a chunk ends at each multiple of the chunk size.
        let edge = UInt64(ChunkedQueue<StreamRecord>.chunkSize) * 10
        #expect(edge > 40_004 && edge < 49_990)
        let span = b.read(from: edge - 3, max: 8) ?? []
        #expect(span.map(\.offset) == Array((edge - 3)...(edge + 4)))
        #expect(span.map(\.stampNanos) == span.map { Int64($0.offset - 1) })
        let all = b.read(from: 40_001, max: 20_000) ?? []
        #expect(all.count == 10_000 && all.first?.offset == 40_001 && all.last?.offset == 50_000)
        #expect(zip(all, all.dropFirst()).allSatisfy { $0.offset + 1 == $1.offset })
    }
}

@Suite("configuration")
struct ConfigTests {
    @Test func flagsAndFileUseTheSameKeys() throws {
        let pairs = try Config.parseFile("# comment\nmemcached = 127.0.0.1:1\npeer 127.0.0.1:2\n\nrole=active # trailing\n", path: "t")
        #expect(pairs.map(\.0) == ["memcached", "peer", "role"])
        var c = Config()
        for (k, v) in pairs { try c.set(k, v) }
        #expect(c.memcached.port == 1 && c.peer?.port == 2 && c.role == .active)
        let f = try Config.parse(["--memcached", "127.0.0.1:5", "--backlog-size=2M", "--role", "passive"])
        #expect(f.memcached.port == 5 && f.backlogSize == 2 << 20 && f.role == .passive)
    }

    @Test func badSettingsAreClearErrors() {
        #expect(throws: Config.Error.self) { try Config.parse(["--nope", "1"]) }
        #expect(throws: Config.Error.self) { try Config.parse(["--role", "leader"]) }
        #expect(throws: Config.Error.self) { try Config.parse(["--memcached", "nohost"]) }
        #expect(throws: Config.Error.self) { try Config.parse(["--peer"]) }
        #expect(throws: Config.Error.self) { try Config.parseFile("just-a-key\n", path: "t") }
    }

    @Test func protectedModeRefusesExposedPortsWithoutSecret() throws {
        var c = Config()
        c.role = .active
        try c.set("listen", "0.0.0.0:11311")
        #expect(throws: Config.Error.self) { try c.validate() }
        try c.set("listen", "10.255.255.1:11311")
        #expect(throws: Config.Error.self) { try c.validate() }
        try c.set("secret-file", "/dev/null")
        try c.validate()
        try c.set("listen", "127.0.0.1:11311")
        c.secretFile = nil
        try c.validate()
    }
}
