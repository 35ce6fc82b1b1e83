import Glibc

/// A `host:port` as operators write it: `127.0.0.1:11211`, `[::1]:11211` or `cache-a:11211`.
///
/// Kept as text until connect time so that a host name is resolved again after a failover
/// (a VIP behind DNS must not be pinned to the address it had at start).
public struct Endpoint: Hashable, Sendable, CustomStringConvertible {
    public let host: String
    public let port: UInt16

    public init(host: String, port: UInt16) {
        self.host = host
        self.port = port
    }

    public struct ParseError: Error, CustomStringConvertible, Sendable {
        public let text: String
        public let reason: String
        public var description: String { "invalid address '\(text)': \(reason) (want HOST:PORT, [IPv6]:PORT)" }
    }

    public init(parsing text: String) throws(ParseError) {
        let hostPart: Substring
        let portPart: Substring
        if text.hasPrefix("[") {
            guard let close = text.firstIndex(of: "]") else { throw ParseError(text: text, reason: "missing ']'") }
            hostPart = text[text.index(after: text.startIndex)..<close]
            let rest = text[text.index(after: close)...]
            guard rest.hasPrefix(":") else { throw ParseError(text: text, reason: "missing port") }
            portPart = rest.dropFirst()
        } else {
            guard let colon = text.lastIndex(of: ":") else { throw ParseError(text: text, reason: "missing port") }
            hostPart = text[..<colon]
            portPart = text[text.index(after: colon)...]
            if hostPart.contains(":") { throw ParseError(text: text, reason: "IPv6 addresses need brackets") }
        }
        guard !hostPart.isEmpty else { throw ParseError(text: text, reason: "empty host") }
        guard let port = UInt16(portPart), port > 0 else { throw ParseError(text: text, reason: "bad port '\(portPart)'") }
        self.host = String(hostPart)
        self.port = port
    }

    public var description: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }

    /// Wildcard binds are refused unless asked for (DESIGN §3, Invariant 8).
    public var isWildcard: Bool { host == "0.0.0.0" || host == "::" || host == "*" }

    /// Whether every address this name resolves to is a loopback one.
    public var isLoopback: Bool {
        guard let addrs = try? resolve(), !addrs.isEmpty else { return false }
        return addrs.allSatisfy { $0.isLoopback }
    }

    public func resolve() throws(SystemError) -> [SocketAddress] {
        var hints = addrinfo()
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        hints.ai_family = AF_UNSPEC
        var result: UnsafeMutablePointer<addrinfo>?
        let rc = getaddrinfo(host, String(port), &hints, &result)
        guard rc == 0, let first = result else {
            let msg = rc == EAI_SYSTEM ? Glibc.errno : EHOSTUNREACH
            throw SystemError(errno: msg, operation: "resolve \(self) (\(String(cString: gai_strerror(rc))))")
        }
        defer { freeaddrinfo(first) }
        var out: [SocketAddress] = []
        var cur: UnsafeMutablePointer<addrinfo>? = first
        while let ai = cur {
            if let sa = ai.pointee.ai_addr {
                out.append(SocketAddress(sa, length: ai.pointee.ai_addrlen))
            }
            cur = ai.pointee.ai_next
        }
        return out
    }
}

/// A resolved socket address, stored by value.
public struct SocketAddress: Sendable, CustomStringConvertible {
    var storage: sockaddr_storage
    public let length: socklen_t

    init(_ sa: UnsafePointer<sockaddr>, length: socklen_t) {
        var st = sockaddr_storage()
        withUnsafeMutableBytes(of: &st) { dst in
            dst.copyMemory(from: UnsafeRawBufferPointer(start: sa, count: Int(length)))
        }
        self.storage = st
        self.length = length
    }

    public var family: Int32 { Int32(storage.ss_family) }

    public var isLoopback: Bool {
        withUnsafeBytes(of: storage) { raw in
            if family == AF_INET {
                let sin = raw.load(as: sockaddr_in.self)
                return UInt32(bigEndian: sin.sin_addr.s_addr) >> 24 == 127
            }
            if family == AF_INET6 {
                let sin6 = raw.load(as: sockaddr_in6.self)
                let bytes = withUnsafeBytes(of: sin6.sin6_addr) { Array($0) }
                return bytes == [UInt8](repeating: 0, count: 15) + [1]
            }
            return false
        }
    }

    public var description: String {
        withUnsafeBytes(of: storage) { raw -> String in
            var buf = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN) + 1)
            if family == AF_INET {
                var sin = raw.load(as: sockaddr_in.self)
                inet_ntop(AF_INET, &sin.sin_addr, &buf, socklen_t(buf.count))
                return "\(cText(buf)):\(UInt16(bigEndian: sin.sin_port))"
            }
            var sin6 = raw.load(as: sockaddr_in6.self)
            inet_ntop(AF_INET6, &sin6.sin6_addr, &buf, socklen_t(buf.count))
            return "[\(cText(buf))]:\(UInt16(bigEndian: sin6.sin6_port))"
        }
    }

    func withSockaddr<R>(_ body: (UnsafePointer<sockaddr>, socklen_t) throws(SystemError) -> R) throws(SystemError) -> R {
        var st = storage
        let len = length
        return try withUnsafePointer(to: &st) { (p) throws(SystemError) -> R in
            try p.withMemoryRebound(to: sockaddr.self, capacity: 1) { (sa) throws(SystemError) -> R in try body(sa, len) }
        }
    }
}

func cText(_ buf: [CChar]) -> String {
    String(decoding: buf.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
}
