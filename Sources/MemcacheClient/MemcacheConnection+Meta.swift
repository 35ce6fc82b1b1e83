import MemcacheProtocol
import UnderstudyPosix

/// The meta protocol, single requests and pipelined batches.
extension MemcacheConnection {
    /// Sends one meta request and reads its reply. A quiet request that the server keeps quiet
    /// would never answer, so single calls must not carry `q`; use `quietBatch` for those.
    public func meta(_ request: MetaRequest) throws(MemcacheError) -> MetaReply {
        if request.isQuiet { throw .protocolError(.unexpected("quiet request outside a batch")) }
        return try pipeline([request])[0]
    }

    /// Sends N requests in one write and reads N replies, in order. None may be quiet.
    public func pipeline(_ requests: [MetaRequest]) throws(MemcacheError) -> [MetaReply] {
        var out: [UInt8] = []
        out.reserveCapacity(requests.count * 48)
        for r in requests {
            if r.isQuiet { throw .protocolError(.unexpected("quiet request in a non-quiet pipeline")) }
            do { try r.encode(into: &out) } catch { throw .protocolError(error) }
        }
        try send(out)
        var replies: [MetaReply] = []
        replies.reserveCapacity(requests.count)
        for _ in requests { replies.append(try readMetaReply()) }
        return replies
    }

    /// Reads `keys` with `MetaRequest.peek` in one pipeline, then gives back every win token
    /// a read took (`MetaRequest.markStale`): reads that are not the application's must
    /// leave a stale item for the application to recache.
    public func peek(_ keys: [[UInt8]], _ flags: [String]) throws(MemcacheError) -> [MetaReply] {
        let replies = try pipeline(keys.map { MetaRequest.peek($0, flags) })
        let returns = zip(keys, replies).filter { $0.1.wonToken }.map { MetaRequest.markStale($0.0) }
        if !returns.isEmpty { _ = try pipeline(returns) }
        return replies
    }

    /// Sends quiet requests followed by `mn`, and reads until `MN`. Returns only what the server
    /// did not suppress (misses for `mg q`, failures and errors for `ms q`/`md q`), each tagged
    /// with the index of the request it answers, recovered from an `O<index>` opaque. Error
    /// lines (`SERVER_ERROR ...`) carry no opaque in memcached 1.6 and come back with index -1.
    /// When this returns, every request in the batch has been processed by the server.
    public func quietBatch(_ requests: [MetaRequest]) throws(MemcacheError) -> [(index: Int, reply: MetaReply)] {
        var out: [UInt8] = []
        out.reserveCapacity(requests.count * 64)
        for (i, var r) in requests.enumerated() {
            if !r.isQuiet { r.flags.append("q") }
            r.flags.append("O\(i)")
            do { try r.encode(into: &out) } catch { throw .protocolError(error) }
        }
        out.append(contentsOf: "mn\r\n".utf8)
        try send(out)
        var got: [(Int, MetaReply)] = []
        while true {
            let r = try readMetaReply()
            if r.status == .mn { return got }
            let idx = r.intFlag("O").map(Int.init) ?? -1
            got.append((idx, r))
        }
    }

    /// `mn` alone: returns once the server has processed everything sent before it.
    public func noop() throws(MemcacheError) {
        try send(Array("mn\r\n".utf8))
        let r = try readMetaReply()
        guard r.status == .mn else { throw .protocolError(.unexpected("expected MN, got \(r.status)")) }
    }

    /// The header of an `mg … v f t` reply, parsed in place (no allocation but the flags
    /// token). For the copy loops that read hundreds of thousands of these a second.
    public struct FetchHeader {
        /// `VA` with this many data bytes following, or nil for any other reply.
        public var dataLength: Int?
        /// `EN`: the key does not exist.
        public var miss: Bool
        public var flags: [UInt8]
        public var ttl: Int64
        /// `X`: the item is stale; `W`: this read took its win token; `Z`: another client
        /// holds it (see `MetaReply`).
        public var stale = false
        public var wonToken = false
        public var tokenOut = false
        public var awaitsRecache: Bool { stale || tokenOut }
        /// The whole line, when it was neither `VA` nor `EN` (an error), for the log.
        public var other: String?
    }

    public func readFetchHeader() throws(MemcacheError) -> FetchHeader {
        let line: UnsafeRawBufferPointer
        do { line = try stream.readLineView() } catch { throw .transport(error) }
        var h = FetchHeader(dataLength: nil, miss: false, flags: [], ttl: -1, other: nil)
        let n = line.count
        if n == 2 && line[0] == UInt8(ascii: "E") && line[1] == UInt8(ascii: "N") {
            h.miss = true
            return h
        }
        guard n >= 4, line[0] == UInt8(ascii: "V"), line[1] == UInt8(ascii: "A"), line[2] == 0x20 else {
            h.other = Bytes.text(Array(line))
            return h
        }
        var i = 3
        var len = 0
        while i < n, line[i] != 0x20 {
            let d = Int(line[i]) - 0x30
            guard d >= 0 && d <= 9 else { throw .protocolError(.malformed(Bytes.text(Array(line)))) }
            len = len * 10 + d
            i += 1
        }
        h.dataLength = len
        while i < n {
            while i < n && line[i] == 0x20 { i += 1 }
            let tokStart = i
            while i < n && line[i] != 0x20 { i += 1 }
            guard tokStart < i else { break }
            switch line[tokStart] {
            case UInt8(ascii: "f"): h.flags = Array(line[(tokStart + 1)..<i])
            case UInt8(ascii: "t"): h.ttl = Bytes.parseInt(line[(tokStart + 1)..<i]) ?? -1
            case UInt8(ascii: "X"): h.stale = true
            case UInt8(ascii: "W"): h.wonToken = true
            case UInt8(ascii: "Z"): h.tokenOut = true
            default: break
            }
        }
        return h
    }

    /// Appends the `count` data bytes that follow a `VA` header to `out`, checking the CRLF.
    public func readData(_ count: Int, appendingTo out: inout [UInt8]) throws(MemcacheError) {
        do {
            try stream.readExact(count, appendingTo: &out)
            let crlf = try stream.readExact(2)
            if crlf != [0x0D, 0x0A] { throw MemcacheError.protocolError(.malformed("data block not terminated by CRLF")) }
        } catch let e as MemcacheError {
            throw e
        } catch {
            throw .transport(error as! StreamError)
        }
    }

    /// Reads one meta reply (and its data block), for callers that pipeline their own requests.
    public func readMetaReply() throws(MemcacheError) -> MetaReply {
        let l = try line()
        var (reply, len) = MetaReply.parseHeader(l)
        if case .error(let e) = reply.status, case .malformed = e { throw .protocolError(e) }
        if let len { reply.value = try data(len) }
        return reply
    }
}
