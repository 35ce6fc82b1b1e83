import Foundation
import UnderstudyPosix

/// The control socket: one request line, one reply, then close.
///
/// Requests: `status`, `promote`, `demote`, `resync`. Replies: a JSON line for status,
/// `OK <text>` or `ERR <text>` otherwise. The socket file is mode 0600 and, belt and braces,
/// a peer whose uid is neither ours nor root is refused (SO_PEERCRED).
struct ControlServer {
    let node: Node

    func run(_ listener: Listener) {
        listener.serve("control") { [node] conn in ControlServer(node: node).serve(conn) }
    }

    func serve(_ conn: Socket) {
        defer { conn.close() }
        let stream = ByteStream(conn, capacity: 4096)
        if let uid = Listener.peerUID(conn), uid != getuid(), uid != 0 {
            Log.warning("control", "refused control connection from uid \(uid)")
            stream.write("ERR permission denied\n")
            try? stream.flush()
            return
        }
        try? conn.setIOTimeout(milliseconds: 30_000)
        guard let line = try? stream.readLineLF(limit: 256) else { return }
        let cmd = String(decoding: line, as: UTF8.self).trimmingCharacters(in: " \r\t")
        stream.write(reply(to: String(cmd)) + "\n")
        try? stream.flush()
    }

    func reply(to cmd: String) -> String {
        func text(_ r: Result<String, Node.StartError>) -> String {
            switch r {
            case .success(let m): return "OK \(m)"
            case .failure(let e): return "ERR \(e.description)"
            }
        }
        switch cmd {
        case "status":
            let enc = JSONEncoder()
            enc.outputFormatting = [.sortedKeys]
            guard let data = try? enc.encode(node.status) else { return "ERR cannot encode status" }
            return String(decoding: data, as: UTF8.self)
        case "promote": return text(node.promote(reason: "control request"))
        case "demote": return text(node.demote(reason: "control request"))
        case "resync": return text(node.resync())
        default: return "ERR unknown command '\(cmd)' (status, promote, demote, resync)"
        }
    }
}
