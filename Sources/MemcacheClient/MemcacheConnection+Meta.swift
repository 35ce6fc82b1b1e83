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

    /// Reads one meta reply (and its data block), for callers that pipeline their own requests.
    public func readMetaReply() throws(MemcacheError) -> MetaReply {
        let l = try line()
        var (reply, len) = MetaReply.parseHeader(l)
        if case .error(let e) = reply.status, case .malformed = e { throw .protocolError(e) }
        if let len { reply.value = try data(len) }
        return reply
    }
}
