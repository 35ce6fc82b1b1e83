/// A text or meta request as a proxy must understand it: how to frame it, what reply to
/// expect, and which keys it changes. Parsing never throws: a bad request becomes a command
/// whose `localReply` is memcached's own answer for it.
public struct ClientCommand: Sendable, Equatable {
    /// The shape of the reply memcached sends when the command is not quiet.
    public enum ReplyShape: Sendable, Equatable {
        case line
        /// `VALUE ...` blocks up to `END` (get, gets, gat, gats).
        case values
        /// One meta reply: `VA` with data, or a line.
        case meta
        /// Lines up to `END` (stats).
        case untilEnd
        /// "\n"-terminated lines up to `END` (lru_crawler metadump).
        case untilEndLF
        /// The client asked to close.
        case close
    }

    /// What the command does to the cache, for the journal.
    public enum Effect: Sendable, Equatable {
        /// A success reply means the key was written (set, add, ..., incr, ms, ma).
        case write([UInt8])
        case delete([UInt8])
        case touch([UInt8])
        /// Each key that comes back with a value was touched (gat, gats).
        case touchHits
        /// `mg` with `T`: a hit was touched; with `N`, a miss was created.
        case metaGet(key: [UInt8], touches: Bool, vivifies: Bool)
        case flush(delay: [UInt8])
    }

    public var reply: ReplyShape
    /// `noreply` or meta `q`: memcached says nothing on success.
    public var quiet: Bool
    /// Bytes of data (without CRLF) that follow the line (storage commands, ms).
    public var dataLength: Int?
    public var effect: Effect?
    /// If set, answer the client with this and do not forward. `closeAfter` ends the session.
    public var localReply: [UInt8]?
    public var isNoop = false

    init(reply: ReplyShape, quiet: Bool, dataLength: Int? = nil, effect: Effect? = nil) {
        self.reply = reply
        self.quiet = quiet
        self.dataLength = dataLength
        self.effect = effect
    }

    /// A request answered locally with `text` (memcached's own words for the problem); any
    /// data block of `swallow` bytes is read and dropped.
    public static func local(_ text: String, swallow: Int? = nil, quiet: Bool = false) -> ClientCommand {
        var c = ClientCommand(reply: .line, quiet: quiet, dataLength: swallow)
        c.localReply = Array((text + "\r\n").utf8)
        return c
    }

    public static let badFormat = "CLIENT_ERROR bad command line format"

    /// Classifies one request line (without CRLF). `maxItemSize` is the server's limit, used to
    /// refuse oversized values before streaming them upstream.
    ///
    /// The tokens are buffers into `line`, gathered on the stack: an array of slices cost an
    /// allocation and a retain and release per token, on every proxied request (a fifth of
    /// the tap's instructions went to parsing). Only what the command keeps (its key) is copied.
    public static func parse(_ line: [UInt8], maxItemSize: Int) -> ClientCommand {
        line.withUnsafeBytes { parse($0, maxItemSize: maxItemSize) }
    }

    /// Classifies a line read in place (a proxy's input buffer), copying only the key.
    public static func parse(_ raw: UnsafeRawBufferPointer, maxItemSize: Int) -> ClientCommand {
        // A token needs at least one byte and a separator: this bounds the count.
        withUnsafeTemporaryAllocation(of: UnsafeRawBufferPointer.self, capacity: raw.count / 2 + 1) { slots in
            var n = 0
            var scanner = TokenScanner(raw)
            while let t = scanner.next() {
                slots[n] = t
                n += 1
            }
            guard n > 0 else { return local("ERROR") }
            return classify(name: slots[0], UnsafeBufferPointer(rebasing: slots[1..<n]), maxItemSize: maxItemSize)
        }
    }

    typealias Args = UnsafeBufferPointer<UnsafeRawBufferPointer>

    /// `args` point into the request line: valid only during this call, so whatever a
    /// command keeps is copied out.
    private static func classify(name token: UnsafeRawBufferPointer, _ args: Args, maxItemSize: Int) -> ClientCommand {
        guard let verb = Verb(token) else { return local("ERROR") }
        switch verb {
        case .set, .add, .replace, .append, .prepend, .cas:
            return storage(verb, args, maxItemSize: maxItemSize)
        case .get, .gets:
            guard !args.isEmpty, args.allSatisfy({ Key.isPlain($0) }) else { return local(badFormat) }
            return ClientCommand(reply: .values, quiet: false)
        case .gat, .gats:
            guard args.count >= 2, Bytes.parseInt(args[0]) != nil, args.dropFirst().allSatisfy({ Key.isPlain($0) }) else {
                return local(badFormat)
            }
            return ClientCommand(reply: .values, quiet: false, effect: .touchHits)
        case .delete:
            guard let key = args.first, Key.isPlain(key) else { return local(badFormat) }
            // memcached accepts a legacy "0" time argument, and nothing else.
            let rest = args.dropFirst().filter { !Bytes.equals($0, "noreply") }
            guard rest.isEmpty || (rest.count == 1 && Bytes.equals(rest[0], "0")) else {
                return local("CLIENT_ERROR bad command line format.  Usage: delete <key> [noreply]")
            }
            return ClientCommand(reply: .line, quiet: isNoreply(args), effect: .delete(Array(key)))
        case .incr, .decr:
            guard args.count >= 2, Key.isPlain(args[0]) else { return local("ERROR") }
            guard Bytes.parseUInt(args[1]) != nil else { return local("CLIENT_ERROR invalid numeric delta argument") }
            return ClientCommand(reply: .line, quiet: isNoreply(args), effect: .write(Array(args[0])))
        case .touch:
            guard args.count >= 2, Key.isPlain(args[0]), Bytes.parseInt(args[1]) != nil else { return local("ERROR") }
            return ClientCommand(reply: .line, quiet: isNoreply(args), effect: .touch(Array(args[0])))
        case .flushAll:
            let delay = args.first.flatMap { Bytes.equals($0, "noreply") ? nil : Array($0) } ?? []
            if !delay.isEmpty && Bytes.parseInt(delay) == nil { return local(badFormat) }
            return ClientCommand(reply: .line, quiet: isNoreply(args), effect: .flush(delay: delay))
        case .mg, .ms, .md, .ma:
            return meta(verb, args, maxItemSize: maxItemSize)
        case .mn:
            var c = ClientCommand(reply: .meta, quiet: false)
            c.isNoop = true
            return c
        case .me:
            return ClientCommand(reply: .line, quiet: false)
        case .version, .verbosity, .cacheMemlimit, .slabs, .shutdown, .misbehave:
            return ClientCommand(reply: .line, quiet: isNoreply(args))
        case .stats:
            return ClientCommand(reply: .untilEnd, quiet: false)
        case .lruCrawler:
            if let sub = args.first, Bytes.equals(sub, "metadump") || Bytes.equals(sub, "mgdump") {
                return ClientCommand(reply: .untilEndLF, quiet: false)
            }
            return ClientCommand(reply: .line, quiet: false)
        case .quit:
            return ClientCommand(reply: .close, quiet: false)
        case .watch:
            return local("CLIENT_ERROR watch is not supported through the understudy tap")
        }
    }

    static func isNoreply(_ args: Args) -> Bool {
        args.last.map { Bytes.equals($0, "noreply") } ?? false
    }

    static func storage(_ verb: Verb, _ args: Args, maxItemSize: Int) -> ClientCommand {
        let want = verb == .cas ? 5 : 4
        guard args.count == want || args.count == want + 1 else { return local("ERROR") }
        guard let len = Bytes.parseInt(args[3]), Bytes.parseUInt(args[1]) != nil, Bytes.parseInt(args[2]) != nil,
              verb != .cas || Bytes.parseUInt(args[4]) != nil else {
            return local(badFormat)
        }
        guard len >= 0, len <= Int64(Int32.max) - 2 else { return local(badFormat) }
        let key = Array(args[0])
        // memcached does not swallow the data block after a bad key (the data line then gets
        // its own ERROR); the tap answers byte for byte the same.
        guard Key.isPlain(key) else { return local(badFormat) }
        if len > Int64(maxItemSize) { return local("SERVER_ERROR object too large for cache", swallow: Int(len)) }
        return ClientCommand(reply: .line, quiet: isNoreply(args), dataLength: Int(len), effect: .write(key))
    }

    static func meta(_ verb: Verb, _ args: Args, maxItemSize: Int) -> ClientCommand {
        guard let keyTok = args.first else { return local(badFormat) }
        var flags = args.dropFirst()
        var dataLength: Int?
        if verb == .ms {
            guard let lt = flags.first, let len = Bytes.parseUInt(lt), len <= UInt64(Int32.max) - 2 else { return local(badFormat) }
            dataLength = Int(len)
            flags = flags.dropFirst()
        }
        let has = { (c: Unicode.Scalar) in flags.contains { $0.first == UInt8(ascii: c) } }
        let key: [UInt8]
        if has("b") {
            guard let k = Base64.decode(keyTok), !k.isEmpty, keyTok.count <= Key.maxLength else {
                return local("CLIENT_ERROR error decoding key", swallow: dataLength)
            }
            key = k
        } else {
            guard Key.isPlain(keyTok) else { return local(badFormat, swallow: dataLength) }
            key = Array(keyTok)
        }
        if let dataLength, dataLength > maxItemSize { return local("SERVER_ERROR object too large for cache", swallow: dataLength) }
        let effect: Effect
        switch verb {
        case .ms, .ma: effect = .write(key)
        case .md: effect = .delete(key)
        default: effect = .metaGet(key: key, touches: has("T"), vivifies: has("N"))
        }
        return ClientCommand(reply: .meta, quiet: has("q"), dataLength: dataLength, effect: effect)
    }
}
