import Glibc
import Synchronization

/// Loopback ports for tests: above 20000, spread by pid so parallel runs on one machine do
/// not collide, and checked free by binding before use. They stay below Linux's ephemeral
/// range (32768 and up): a port there can be taken by some outgoing connection's local end
/// between the check and the server's bind, which failed a run with "Address already in use".
enum Ports {
    static let range = 20000..<32768
    private static let next = Atomic<Int>(Int(getpid() % 600) * 20)

    static func free() -> UInt16 {
        for _ in 0..<2000 {
            let p = range.lowerBound + next.add(1, ordering: .relaxed).newValue % range.count
            if isFree(UInt16(p)) { return UInt16(p) }
        }
        fatalError("no free loopback port found")
    }

    /// Thrown by a `starting` closure when its server found the port taken; `error` is what
    /// the caller gets if no try is left.
    struct Taken: Error { let error: any Error }

    /// Starts a server on a free port (or on `fixed`). A port checked free can still be taken
    /// before the server binds it (by another test's server, a restarted one's old sockets
    /// still closing, or, once in CI, something not found), so when `start` throws `Taken`
    /// it is tried again after a pause: on a fresh port, or on `fixed` again. Five tries.
    static func starting<T>(fixed: UInt16? = nil, _ start: (UInt16) throws -> T) throws -> T {
        var attempt = 0
        while true {
            attempt += 1
            let p = fixed ?? free()
            do { return try start(p) } catch let taken as Taken {
                if attempt == 5 { throw taken.error }
                usleep(200_000)
            }
        }
    }

    static func isFree(_ port: UInt16) -> Bool {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var sin = sockaddr_in()
        sin.sin_family = sa_family_t(AF_INET)
        sin.sin_port = port.bigEndian
        sin.sin_addr.s_addr = UInt32(0x7f00_0001).bigEndian
        let rc = withUnsafePointer(to: &sin) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        return rc == 0
    }
}
