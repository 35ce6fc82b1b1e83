import Foundation
import JournalWire
import MemcacheProtocol
import Testing
import UnderstudyCore
import UnderstudyPosix

/// Seeded random-mutation fuzzing of every parser that reads bytes from the outside: the tap's
/// request parser, meta reply headers, the journal framing, metadump lines, the config file,
/// binary headers, base64 and addresses. A crash ends the test process, which fails the run.
/// Beyond "no crash", each target checks a property (round trips, bounds).
///
/// `FUZZ_ITERATIONS=1000000 swift test --filter Fuzz` runs longer; the default keeps CI quick.
@Suite("fuzzing the parsers")
struct FuzzTests {
    static let iterations = Int(ProcessInfo.processInfo.environment["FUZZ_ITERATIONS"] ?? "") ?? 20_000

    static let interesting: [UInt8] = [0x00, 0x0A, 0x0D, 0x20, 0x25, 0x2D, 0x30, 0x39, 0x3D, 0x7F, 0x80, 0xFF, 0x71, 0x62, 0x54]

    static func mutate(_ input: [UInt8], _ corpus: [[UInt8]], _ rng: inout SeededRandom) -> [UInt8] {
        var b = input
        for _ in 0..<Int.random(in: 1...4, using: &rng) {
            switch Int.random(in: 0..<7, using: &rng) {
            case 0 where !b.isEmpty: b[Int.random(in: 0..<b.count, using: &rng)] ^= UInt8(1 << Int.random(in: 0..<8, using: &rng))
            case 1: b.insert(interesting.randomElement(using: &rng)!, at: Int.random(in: 0...b.count, using: &rng))
            case 2 where !b.isEmpty: b.remove(at: Int.random(in: 0..<b.count, using: &rng))
            case 3 where !b.isEmpty: b = Array(b.prefix(Int.random(in: 0...b.count, using: &rng)))
            case 4 where !b.isEmpty:
                let i = Int.random(in: 0..<b.count, using: &rng)
                let n = Int.random(in: 1...min(16, b.count - i), using: &rng)
                b.insert(contentsOf: b[i..<(i + n)], at: Int.random(in: 0...b.count, using: &rng))
            case 5:
                let other = corpus.randomElement(using: &rng)!
                b = Array(b.prefix(Int.random(in: 0...b.count, using: &rng))) + other.suffix(Int.random(in: 0...other.count, using: &rng))
            default:
                if !b.isEmpty { b[Int.random(in: 0..<b.count, using: &rng)] = interesting.randomElement(using: &rng)! }
            }
        }
        return b
    }

    /// Runs `body` on mutants of the corpus; returns how many inputs were tried.
    @discardableResult
    static func fuzz(_ corpus: [[UInt8]], seed: UInt64, _ body: ([UInt8]) -> Void) -> Int {
        var rng = SeededRandom(seed)
        for c in corpus { body(c) }
        for _ in 0..<iterations { body(mutate(corpus.randomElement(using: &rng)!, corpus, &rng)) }
        return corpus.count + iterations
    }

    @Test func tapRequestParser() {
        let corpus = ["set k 0 0 5", "cas k 1 2 3 99 noreply", "get a b c", "gat 10 a", "delete k noreply", "incr k 5",
                      "touch k 10", "flush_all 5", "ms a2V5 5 b T0 F3 q", "mg k v f t T30 N5 k O12", "md k q", "ma k N0 J1 D3",
                      "mn", "stats slabs", "lru_crawler metadump hash", "quit", "verbosity 1", "watch"].map { Array($0.utf8) }
        Self.fuzz(corpus, seed: 1) { line in
            let c = ClientCommand.parse(line, maxItemSize: 1 << 20)
            if let n = c.dataLength { #expect(n >= 0 && n <= Int(Int32.max)) }
            #expect(c.localReply != nil || c.effect != nil || c.reply != .line || line.count > 0)
        }
    }

    @Test func metaReplyHeaders() {
        let corpus = ["VA 5 f3 t-1 k Obc", "HD", "EN", "NS", "EX", "NF", "MN", "SERVER_ERROR out of memory", "CLIENT_ERROR bad", "ERROR"]
            .map { Array($0.utf8) }
        Self.fuzz(corpus, seed: 2) { line in
            let (reply, len) = MetaReply.parseHeader(line)
            if let len { #expect(len >= 0 && reply.status == .va) }
            _ = reply.intFlag("t")
            _ = reply.key
        }
    }

    @Test func journalFrames() {
        let corpus = JournalWireTests.samples.map { Array($0.frame().dropFirst(4)) }
        Self.fuzz(corpus, seed: 3) { body in
            if let m = try? Message.decode(body) {
                // Anything accepted re-encodes to exactly what was read.
                #expect(Array(m.frame().dropFirst(4)) == body)
            }
        }
    }

    @Test func metadumpLines() {
        let corpus = ["key=a%20b exp=-1 la=1 cas=2 fetch=no cls=1 size=63", "key=x exp=1795308756 la=1 cas=2 fetch=yes cls=3 size=100"]
            .map { Array($0.utf8) }
        Self.fuzz(corpus, seed: 4) { line in
            if let e = try? MetadumpEntry.parse(line) { #expect(!e.key.isEmpty && (e.expiry ?? 0) >= 0) }
        }
    }

    @Test func configFiles() {
        let corpus = ["memcached = 127.0.0.1:1\nrole = active\n# c\n", "peer 10.0.0.1:11311\nbacklog-size=64M\n", "listen=[::1]:5,127.0.0.1:6\n"]
            .map { Array($0.utf8) }
        Self.fuzz(corpus, seed: 5) { text in
            guard let pairs = try? Config.parseFile(String(decoding: text, as: UTF8.self), path: "fuzz") else { return }
            var c = Config()
            for (k, v) in pairs { try? c.set(k, v) }
            #expect(c.backlogSize >= 1024 && c.batchSize > 0)
        }
    }

    @Test func smallDecoders() {
        let corpus = ["Zm9vYmFy", "Zm8=", "[::1]:11211", "127.0.0.1:1", "VALUE k 0 5 77"].map { Array($0.utf8) }
            + [BinaryHeader(magic: 0x80, opcode: 1, keyLength: 3, bodyLength: 3).encode()]
        Self.fuzz(corpus, seed: 6) { b in
            // Lenient like memcached about the unused bits of the last character; stable after.
            if let d = Base64.decode(b) { #expect(Base64.decode(Base64.encode(d)) == d) }
            _ = try? Endpoint(parsing: String(decoding: b, as: UTF8.self))
            if let v = ValueHeader.parse(b) { #expect(v.length >= 0) }
            if b.count >= 24 { #expect(BinaryHeader(parsing: Array(b.prefix(24))).encode() == Array(b.prefix(24))) }
        }
    }
}
