import Foundation
import UnderstudyPosix

/// What a node must remember across restarts: the highest epoch it has seen (Invariant 7) and
/// its role. Written atomically (temp file, fsync, rename), so a crash or a full disk leaves
/// the previous state intact.
struct NodeState: Codable, Equatable {
    var epoch: UInt64 = 0
    var role: String = "passive"
    var lastInSync: Int64?

    static func load(from dir: String) throws -> NodeState {
        let path = dir + "/state.json"
        guard Files.exists(path) else { return NodeState() }
        return try JSONDecoder().decode(NodeState.self, from: Data(try Files.read(path)))
    }

    func save(to dir: String) throws {
        try Files.writeAtomically(Array(try JSONEncoder().encode(self)), to: dir + "/state.json")
    }
}
