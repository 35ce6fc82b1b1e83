import Foundation
import UnderstudyPosix

/// Repeated measurements of one figure: median and spread, as the issue asks (≥ 3 runs).
struct Figure {
    var values: [Double] = []
    var median: Double {
        let s = values.sorted()
        guard !s.isEmpty else { return .nan }
        return s.count % 2 == 1 ? s[s.count / 2] : (s[s.count / 2 - 1] + s[s.count / 2]) / 2
    }
    var spread: String {
        guard let lo = values.min(), let hi = values.max() else { return "-" }
        return "\(fmt(lo))–\(fmt(hi))"
    }
}

func percentile(_ xs: [Double], _ p: Double) -> Double {
    guard !xs.isEmpty else { return .nan }
    let s = xs.sorted()
    return s[min(s.count - 1, Int(Double(s.count - 1) * p + 0.5))]
}

func fmt(_ v: Double) -> String {
    if v.isNaN { return "n/a" }
    if v >= 100_000 { return String(format: "%.0fk", v / 1000) }
    if v >= 1000 { return String(format: "%.1fk", v / 1000) }
    if v >= 10 { return String(format: "%.0f", v) }
    return String(format: "%.2f", v)
}

/// The one table the benchmark prints.
final class Table {
    var rows: [[String]] = [["benchmark", "measure", "median", "spread", "baseline", "ratio", "goal"]]

    func add(_ bench: String, _ measure: String, _ f: Figure, baseline: String = "", ratio: Double? = nil, goal: String = "") {
        rows.append([bench, measure, fmt(f.median), f.spread, baseline, ratio.map { String(format: "%.2f×", $0) } ?? "", goal])
    }

    func print() {
        var widths = [Int](repeating: 0, count: rows[0].count)
        for r in rows { for (i, c) in r.enumerated() { widths[i] = max(widths[i], c.count) } }
        for (n, r) in rows.enumerated() {
            Swift.print(r.enumerated().map { $0.element.padding(toLength: widths[$0.offset], withPad: " ", startingAt: 0) }.joined(separator: " | "))
            if n == 0 { Swift.print(widths.map { String(repeating: "-", count: $0) }.joined(separator: "-|-")) }
        }
    }
}

func log(_ s: String) {
    Log.line("bench: \(s)")
}
