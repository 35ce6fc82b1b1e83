/// A request's command name, matched on its bytes.
///
/// Building a `String` from the token and switching over string literals went through the
/// string machinery and compared the name with each case in turn, on every proxied request.
/// Matching by length first leaves a handful of short byte comparisons.
enum Verb: Equatable, CaseIterable {
    case set, add, replace, append, prepend, cas
    case get, gets, gat, gats
    case delete, incr, decr, touch, flushAll
    case mg, ms, md, ma, mn, me
    case version, verbosity, cacheMemlimit, slabs, shutdown, misbehave
    case stats, lruCrawler, quit, watch

    /// Nil for a name memcached does not know (it answers `ERROR`).
    init?(_ t: UnsafeRawBufferPointer) {
        func `is`(_ name: StaticString) -> Bool { Bytes.equals(t, name) }
        let verb: Verb?
        switch t.count {
        case 2:
            guard t[0] == UInt8(ascii: "m") else { return nil }
            switch t[1] {
            case UInt8(ascii: "g"): verb = .mg
            case UInt8(ascii: "s"): verb = .ms
            case UInt8(ascii: "d"): verb = .md
            case UInt8(ascii: "a"): verb = .ma
            case UInt8(ascii: "n"): verb = .mn
            case UInt8(ascii: "e"): verb = .me
            default: verb = nil
            }
        case 3: verb = `is`("set") ? .set : `is`("get") ? .get : `is`("add") ? .add : `is`("cas") ? .cas : `is`("gat") ? .gat : nil
        case 4: verb = `is`("gets") ? .gets : `is`("incr") ? .incr : `is`("decr") ? .decr : `is`("gats") ? .gats : `is`("quit") ? .quit : nil
        case 5: verb = `is`("touch") ? .touch : `is`("stats") ? .stats : `is`("slabs") ? .slabs : `is`("watch") ? .watch : nil
        case 6: verb = `is`("delete") ? .delete : `is`("append") ? .append : nil
        case 7: verb = `is`("replace") ? .replace : `is`("prepend") ? .prepend : `is`("version") ? .version : nil
        case 8: verb = `is`("shutdown") ? .shutdown : nil
        case 9: verb = `is`("flush_all") ? .flushAll : `is`("verbosity") ? .verbosity : `is`("misbehave") ? .misbehave : nil
        case 11: verb = `is`("lru_crawler") ? .lruCrawler : nil
        case 14: verb = `is`("cache_memlimit") ? .cacheMemlimit : nil
        default: verb = nil
        }
        guard let verb else { return nil }
        self = verb
    }

    /// The name as memcached spells it.
    var name: String {
        switch self {
        case .flushAll: return "flush_all"
        case .cacheMemlimit: return "cache_memlimit"
        case .lruCrawler: return "lru_crawler"
        default: return "\(self)"
        }
    }
}
