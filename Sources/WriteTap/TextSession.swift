import JournalWire
import MemcacheProtocol
import UnderstudyPosix

/// One client speaking the text protocol (classic and meta) through the tap.
///
/// Replies are relayed byte for byte. A record is emitted only after memcached's success
/// reply was read (Invariant 1). `noreply` and meta-quiet writes get no reply on success, so
/// before the next reply-bearing request — or when the client goes idle — the session sends
/// its own `mn` and journals them once `MN` proves memcached processed them.
final class TextSession {
    let client: ByteStream
    let upstream: SessionUpstream
    let maxItemSize: Int
    /// Effects of quiet requests sent but not yet fenced.
    var unfenced: [ClientCommand.Effect] = []
    var needFence = false

    init(proxy: TapProxy, client: ByteStream) {
        self.client = client
        self.upstream = SessionUpstream(proxy: proxy, dialect: .text)
        self.maxItemSize = proxy.itemSizeMax
    }

    func run() {
        do {
            while try step() {}
        } catch {
            // Client gone or stalled: nothing to answer. A pending fence still runs so that
            // writes memcached applied are journaled.
        }
        if needFence { fence() }
    }

    /// Handles one request. False when the session should end.
    func step() throws(StreamError) -> Bool {
        if !client.hasBufferedLine {
            if needFence { fence() }
            try client.flush()
        }
        let line: [UInt8]
        do {
            line = try client.readLine(limit: 8192)
        } catch .lineTooLong {
            // memcached swallows an over-long line and answers ERROR; so do we.
            try client.skipLine()
            client.write("ERROR\r\n")
            return true
        } catch .closed {
            return false
        }
        var cmd = ClientCommand.parse(line, maxItemSize: maxItemSize)
        var data: [UInt8] = []
        if let len = cmd.dataLength {
            if cmd.localReply != nil {
                try client.skip(len + 2)
            } else {
                try client.readExact(len + 2, appendingTo: &data)
                if data[len] != 0x0D || data[len + 1] != 0x0A {
                    cmd = .local("CLIENT_ERROR bad data chunk", quiet: cmd.quiet)
                }
            }
        }
        if let reply = cmd.localReply {
            // memcached stays silent about refused storage under noreply; match it.
            if !cmd.quiet { client.write(reply) }
            return true
        }
        if cmd.reply == .close { return false }
        if needFence && !cmd.quiet && !cmd.isNoop { fence() }
        forward(line, data, cmd)
        return true
    }

    func forward(_ line: [UInt8], _ data: [UInt8], _ cmd: ClientCommand) {
        let up: ByteStream
        switch upstream.connection() {
        case .success(let s): up = s
        case .failure(let f):
            if !cmd.quiet { client.write("SERVER_ERROR \(f.message)\r\n") }
            return
        }
        up.write(line)
        up.write("\r\n")
        if !data.isEmpty { up.write(data) }
        do {
            try up.flush()
            if cmd.quiet {
                needFence = true
                if let e = cmd.effect { unfenced.append(e) }
                return
            }
            try relay(cmd, from: up)
        } catch {
            upstream.drop()
            // The write may or may not have landed; a record for it is harmless, a missing one is not.
            if let e = cmd.effect { _ = journal(e, hits: []) }
            if !cmd.quiet { client.write("SERVER_ERROR connection to memcached lost: \(error)\r\n") }
        }
    }

    /// Reads and relays one reply, journaling the effect if the reply means success.
    func relay(_ cmd: ClientCommand, from up: ByteStream) throws(StreamError) {
        switch cmd.reply {
        case .values:
            var hits: [[UInt8]] = []
            while true {
                let l = try up.readLine()
                guard let h = ValueHeader.parse(l) else {
                    finish(l, cmd, success: false, extra: hits)
                    return
                }
                client.write(l)
                client.write("\r\n")
                try up.readExact(h.length + 2, appendingTo: &client.output)
                hits.append(h.key)
            }
        case .meta:
            if cmd.isNoop {
                // The client's own fence: everything up to MN answers its quiet requests.
                try relayUntilMN(up)
                flushUnfenced()
                client.write("MN\r\n")
                return
            }
            let l = try up.readLine()
            let (reply, len) = MetaReply.parseHeader(l)
            var body: [UInt8] = []
            if let len { try up.readExact(len + 2, appendingTo: &body) }
            finish(l, cmd, success: metaSuccess(cmd.effect, reply.status), extra: [], body: body)
        case .untilEnd, .untilEndLF:
            while true {
                let l = cmd.reply == .untilEndLF ? try up.readLineLF(limit: 1 << 16) : try up.readLine(limit: 1 << 16)
                client.write(l)
                client.write(cmd.reply == .untilEndLF && l != Array("END".utf8) ? "\n" : "\r\n")
                if l == Array("END".utf8) || ProtocolError.fromErrorLine(l) != nil || l.starts(with: Array("BUSY".utf8)) { return }
            }
        case .line, .close:
            let l = try up.readLine()
            finish(l, cmd, success: lineSuccess(cmd.effect, l), extra: [])
        }
    }

    /// Journals (and in sync mode waits), then writes the reply — or, in strict mode when the
    /// follower did not apply, `SERVER_ERROR` in its place.
    func finish(_ line: [UInt8], _ cmd: ClientCommand, success: Bool, extra hits: [[UInt8]], body: [UInt8] = []) {
        var refusal: String?
        if success || cmd.reply == .values, let effect = cmd.effect {
            refusal = journal(effect, hits: hits)
        }
        if let refusal, cmd.reply != .values {
            client.write("SERVER_ERROR \(refusal)\r\n")
            return
        }
        client.write(line)
        client.write("\r\n")
        client.write(body)
    }

    func lineSuccess(_ effect: ClientCommand.Effect?, _ l: [UInt8]) -> Bool {
        guard let effect else { return false }
        switch effect {
        case .write: return l == Array("STORED".utf8) || Bytes.parseUInt(l) != nil
        case .delete: return l == Array("DELETED".utf8)
        case .touch: return l == Array("TOUCHED".utf8)
        case .flush: return l == Array("OK".utf8)
        default: return false
        }
    }

    func metaSuccess(_ effect: ClientCommand.Effect?, _ status: MetaReply.Status) -> Bool {
        guard let effect else { return false }
        switch effect {
        case .write, .delete: return status == .hd || status == .va
        case .metaGet(_, let touches, let vivifies):
            return (touches && (status == .hd || status == .va)) || (vivifies && status == .en) || (vivifies && status == .va)
        default: return false
        }
    }

    /// Proves memcached processed every quiet request sent so far, relaying any replies they
    /// produced, then journals their effects.
    func fence() {
        needFence = false
        guard case .success(let up) = upstream.connection() else {
            flushUnfenced()
            return
        }
        up.write("mn\r\n")
        do {
            try up.flush()
            try relayUntilMN(up)
        } catch {
            upstream.drop()
        }
        flushUnfenced()
    }

    /// Relays replies (lines, or `VA` with data) to the client until `MN`, which is consumed.
    func relayUntilMN(_ up: ByteStream) throws(StreamError) {
        while true {
            let l = try up.readLine()
            let (reply, len) = MetaReply.parseHeader(l)
            if reply.status == .mn { return }
            client.write(l)
            client.write("\r\n")
            if let len { try up.readExact(len + 2, appendingTo: &client.output) }
        }
    }

    func flushUnfenced() {
        needFence = false
        let effects = unfenced
        unfenced.removeAll()
        for e in effects { _ = journal(e, hits: []) }
    }

    /// Journals one effect; returns strict mode's refusal if the follower did not apply it.
    func journal(_ e: ClientCommand.Effect, hits: [[UInt8]]) -> String? {
        var refusal: String?
        for (op, key) in e.records(hits: hits) { refusal = upstream.journal(op, key) ?? refusal }
        return refusal
    }
}
