import Glibc

/// An failed system call: the errno, captured immediately, plus what we were doing.
///
/// Carrying the operation and its subject ("connect 10.0.0.1:11211") is what makes a log line
/// actionable at 3 a.m.; a bare errno is not.
public struct SystemError: Error, CustomStringConvertible, Equatable, Sendable {
    public let errno: Int32
    public let operation: String

    public init(errno: Int32, operation: String) {
        self.errno = errno
        self.operation = operation
    }

    public var description: String {
        let text = String(cString: strerror(errno))
        return "\(operation): \(text) (errno \(errno))"
    }

    public var isTimeout: Bool { errno == EAGAIN || errno == EWOULDBLOCK || errno == ETIMEDOUT }
}
