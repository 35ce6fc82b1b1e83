/// memcached's binary protocol header (24 bytes) and the opcode facts a proxy needs.
/// PHP's session handler speaks this by default (`memcached.sess_binary_protocol=On`).
public struct BinaryHeader: Equatable, Sendable {
    public static let size = 24
    public var magic: UInt8
    public var opcode: UInt8
    public var keyLength: UInt16
    public var extrasLength: UInt8
    public var dataType: UInt8
    /// vbucket id in requests, status in responses.
    public var status: UInt16
    public var bodyLength: UInt32
    public var opaque: UInt32
    public var cas: UInt64

    public init(magic: UInt8, opcode: UInt8, keyLength: UInt16 = 0, extrasLength: UInt8 = 0, status: UInt16 = 0,
                bodyLength: UInt32 = 0, opaque: UInt32 = 0, cas: UInt64 = 0) {
        self.magic = magic
        self.opcode = opcode
        self.keyLength = keyLength
        self.extrasLength = extrasLength
        self.dataType = 0
        self.status = status
        self.bodyLength = bodyLength
        self.opaque = opaque
        self.cas = cas
    }

    public init(parsing b: [UInt8]) {
        func u16(_ i: Int) -> UInt16 { UInt16(b[i]) << 8 | UInt16(b[i + 1]) }
        func u32(_ i: Int) -> UInt32 { (0..<4).reduce(0) { $0 << 8 | UInt32(b[i + $1]) } }
        magic = b[0]
        opcode = b[1]
        keyLength = u16(2)
        extrasLength = b[4]
        dataType = b[5]
        status = u16(6)
        bodyLength = u32(8)
        opaque = u32(12)
        cas = UInt64(u32(16)) << 32 | UInt64(u32(20))
    }

    public func encode() -> [UInt8] {
        var o: [UInt8] = [magic, opcode, UInt8(keyLength >> 8), UInt8(keyLength & 0xff), extrasLength, dataType,
                          UInt8(status >> 8), UInt8(status & 0xff)]
        for v in [bodyLength, opaque, UInt32(cas >> 32), UInt32(cas & 0xffff_ffff)] {
            o += [UInt8(v >> 24), UInt8(v >> 16 & 0xff), UInt8(v >> 8 & 0xff), UInt8(v & 0xff)]
        }
        return o
    }
}

public enum BinaryPacket {
    public static let requestMagic: UInt8 = 0x80
    public static let responseMagic: UInt8 = 0x81

    public enum Status {
        public static let ok: UInt16 = 0x0000
        public static let keyNotFound: UInt16 = 0x0001
        public static let valueTooLarge: UInt16 = 0x0003
        public static let invalidArguments: UInt16 = 0x0004
        public static let unknownCommand: UInt16 = 0x0081
        public static let temporaryFailure: UInt16 = 0x0086
    }

    public enum Opcode {
        public static let noop: UInt8 = 0x0a
        public static let stat: UInt8 = 0x10
        public static let quit: UInt8 = 0x07
        public static let quitQ: UInt8 = 0x17
    }

    /// Quiet opcodes: no reply on success (for gets: on a miss).
    public static func isQuiet(_ op: UInt8) -> Bool {
        [0x09, 0x0d, 0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18, 0x19, 0x1a, 0x1e, 0x24].contains(op)
    }

    public enum Effect: Equatable, Sendable { case write, delete, touch, flush }

    /// What a successful reply to this opcode did to its key.
    public static func effect(_ op: UInt8) -> Effect? {
        switch op {
        case 0x01, 0x02, 0x03, 0x0e, 0x0f, 0x11, 0x12, 0x13, 0x19, 0x1a, 0x05, 0x06, 0x15, 0x16: return .write
        case 0x04, 0x14: return .delete
        case 0x1c, 0x1d, 0x1e, 0x23, 0x24: return .touch
        case 0x08, 0x18: return .flush
        default: return nil
        }
    }

    /// A response carrying only a status and an error message, as memcached sends them.
    public static func errorResponse(opcode: UInt8, status: UInt16, opaque: UInt32, message: String) -> [UInt8] {
        let body = Array(message.utf8)
        let h = BinaryHeader(magic: responseMagic, opcode: opcode, status: status, bodyLength: UInt32(body.count), opaque: opaque)
        return h.encode() + body
    }
}
