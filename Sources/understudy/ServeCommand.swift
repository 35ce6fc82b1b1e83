import Foundation
import Glibc
import UnderstudyCore
import UnderstudyPosix

enum ServeCommand {
    static func help() -> String {
        var s = "usage: understudy serve [--config FILE] [--KEY VALUE ...]\n\nEvery key may also be set in the --config file as 'KEY = VALUE'.\n\n"
        for (k, h) in Config.keys { s += "  --\(k.padding(16))\(h)\n" }
        return s
    }

    static func run(_ args: [String]) -> Int32 {
        if args.contains("--help") { print(help(), terminator: ""); return 0 }
        let config: Config
        do { config = try Config.parse(args) } catch {
            printError("understudy serve: \(error)")
            return 64
        }
        Log.setLevel(config.logLevel)
        switch Allocator.holdMemoryMapSteady(environment: ProcessInfo.processInfo.environment) {
        case .tuned: break
        case .leftToOperator: Log.info("node", "GLIBC_TUNABLES sets malloc: leaving the allocator as configured")
        case .refused(let setting): Log.warning("node", "glibc refused mallopt(\(setting)): the journal's growth may stall on memory-map locks")
        }
        let node: Node
        do { node = try Node(config) } catch {
            printError("understudy serve: \(error)")
            return 1
        }
        node.start()
        print("understudy serve: ready (journal port \(node.journalPort)\(node.metricsPort.map { ", metrics port \($0)" } ?? ""))")
        _ = Signals.waitForTermination()
        Log.info("node", "SIGTERM: stopping gracefully (send again to stop at once)")
        Threads.start("hard-stop") {
            _ = Signals.waitForTermination()
            Log.warning("node", "second signal: exiting now")
            exit(1)
        }
        node.stop()
        Clock.sleep(milliseconds: 200)
        return 0
    }
}
