//! The short report printed when mapscope detaches.
use std::fmt::Write as _;

use crate::model::pause::PauseBook;

pub fn render(book: &PauseBook, pid: u32, exe: &str, go_version: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "mapscope: pid {pid} ({exe}, {go_version}): {} stop-the-world pauses, {} GC cycles completed",
        book.pauses(),
        book.gc_cycles
    );
    if book.by_reason.is_empty() {
        return out;
    }
    let _ = writeln!(
        out,
        "  {:<26} {:>8} {:>10} {:>10} {:>10} {:>12}",
        "reason", "count", "p50", "p99", "max", "total"
    );
    for (reason, tally) in &book.by_reason {
        let histogram = &tally.total;
        if histogram.count() == 0 {
            continue;
        }
        let show = |ns: Option<u64>| ns.map_or_else(|| "-".to_owned(), duration);
        let _ = writeln!(
            out,
            "  {:<26} {:>8} {:>10} {:>10} {:>10} {:>12}",
            reason,
            histogram.count(),
            show(histogram.quantile(0.5)),
            show(histogram.quantile(0.99)),
            show(histogram.max()),
            duration(u64::try_from(tally.sum_ns).unwrap_or(u64::MAX)),
        );
    }
    out
}

/// `850ns`, `42.1µs`, `3ms`, `1.5s`: three significant figures, trailing zeros dropped.
pub fn duration(ns: u64) -> String {
    let ns = ns as f64;
    let (value, unit) = if ns < 1e3 {
        (ns, "ns")
    } else if ns < 1e6 {
        (ns / 1e3, "µs")
    } else if ns < 1e9 {
        (ns / 1e6, "ms")
    } else {
        (ns / 1e9, "s")
    };
    let decimals = if value >= 100.0 {
        0
    } else if value >= 10.0 {
        1
    } else {
        2
    };
    let text = format!("{value:.decimals$}");
    let text = if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.')
    } else {
        &text
    };
    format!("{text}{unit}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::pause::Pause;

    #[test]
    fn durations_read_naturally() {
        assert_eq!(duration(850), "850ns");
        assert_eq!(duration(42_100), "42.1µs");
        assert_eq!(duration(3_000_000), "3ms");
        assert_eq!(duration(1_500_000_000), "1.5s");
        assert_eq!(duration(75_776), "75.8µs");
        assert_eq!(duration(151_552), "152µs");
        assert_eq!(duration(1_032_000), "1.03ms");
    }

    #[test]
    fn summary_lists_each_reason() {
        let mut book = PauseBook::default();
        for total_ns in [10_000, 20_000, 30_000] {
            book.record(&Pause {
                reason: "gc_mark_termination".into(),
                ends_gc_cycle: true,
                total_ns,
                stopping_ns: None,
            });
        }
        let text = render(&book, 7, "svc", "go1.27.3");
        assert!(
            text.starts_with(
                "mapscope: pid 7 (svc, go1.27.3): 3 stop-the-world pauses, 3 GC cycles"
            )
        );
        let row = text
            .lines()
            .find(|line| line.contains("gc_mark_termination"))
            .unwrap();
        assert!(
            row.contains(" 3 ") && row.contains("30µs") && row.contains("60µs"),
            "{row}"
        );
    }
}
