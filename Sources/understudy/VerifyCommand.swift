import UnderstudyCore
import UnderstudyPosix

enum VerifyCommand {
    static func run(_ args: [String]) -> Int32 {
        if args.contains("--help") {
            print("usage: understudy verify --active H:P --passive H:P [--ttl-tolerance SECONDS] [--show N]")
            return 0
        }
        do {
            let o = try Options(args, valued: ["active", "passive", "ttl-tolerance", "show"], switches: [])
            guard let a = try o.endpoint("active"), let p = try o.endpoint("passive") else {
                printError("understudy verify: --active and --passive are required")
                return 64
            }
            var v = Verifier(active: a, passive: p)
            if let t = o.values["ttl-tolerance"] {
                guard let n = Int64(t), n >= 0 else { printError("understudy verify: bad --ttl-tolerance"); return 64 }
                v.ttlTolerance = n
            }
            let show = Int(o.values["show"] ?? "20") ?? 20
            do {
                let r = try v.run(showing: show)
                print("compared:\(r.compared) differences:\(r.total) missing_on_passive:\(r.missing) only_on_passive:\(r.extra) value:\(r.valueDiffs) flags:\(r.flagDiffs) ttl:\(r.ttlDiffs) stale:\(r.staleDiffs)")
                for d in r.first { print("  \(d)") }
                return r.total == 0 ? 0 : 1
            } catch {
                printError("understudy verify: \(error)")
                return 2
            }
        } catch {
            printError("understudy verify: \(error.message)")
            return 64
        }
    }
}
