// swift-tools-version:6.0
import PackageDescription

let strict: [SwiftSetting] = [.enableUpcomingFeature("ExistentialAny")]

let package = Package(
    name: "Understudy",
    products: [
        .executable(name: "understudy", targets: ["understudy"]),
        .library(name: "MemcacheClient", targets: ["MemcacheClient"]),
        .library(name: "WriteTap", targets: ["WriteTap"]),
    ],
    targets: [
        .target(name: "CLinuxEvents"),
        .target(name: "UnderstudyPosix", dependencies: ["CLinuxEvents"], swiftSettings: strict),
        .target(name: "MemcacheProtocol", swiftSettings: strict),
        .target(name: "MemcacheClient", dependencies: ["UnderstudyPosix", "MemcacheProtocol"], swiftSettings: strict),
        .target(name: "JournalWire", dependencies: ["UnderstudyPosix"], swiftSettings: strict),
        .target(
            name: "WriteTap",
            dependencies: ["UnderstudyPosix", "MemcacheProtocol", "MemcacheClient", "JournalWire"],
            swiftSettings: strict),
        .target(
            name: "UnderstudyCore",
            dependencies: ["UnderstudyPosix", "MemcacheProtocol", "MemcacheClient", "JournalWire", "WriteTap"],
            swiftSettings: strict),
        .executableTarget(name: "understudy", dependencies: ["UnderstudyCore", "WriteTap", "JournalWire", "UnderstudyPosix"], swiftSettings: strict),
        .executableTarget(name: "understudy-bench", dependencies: ["MemcacheProtocol", "MemcacheClient", "UnderstudyPosix", "UnderstudyCore"], swiftSettings: strict),
        .testTarget(
            name: "UnderstudyTests",
            dependencies: ["UnderstudyPosix", "MemcacheProtocol", "MemcacheClient", "JournalWire", "WriteTap", "UnderstudyCore"],
            swiftSettings: strict),
    ],
    swiftLanguageModes: [.v6]
)
