//! mapscope's pause numbers against the Go runtime's own, for every supported Go release:
//! a GC-heavy target reports runtime/metrics and MemStats deltas for a load window that
//! mapscope observes in full.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a failure here is a test failure"
)]

mod common;

use std::time::Duration;

use common::{GoTarget, Mapscope, Report, is_gc_reason};

/// How far mapscope's pause-time sum may be from the runtime's `PauseTotalNs` on Go 1.22+,
/// where both add up the very same runtime timestamps (worldStop start → start-the-world
/// `now`): only float rounding of the Prometheus sum separates them.
const SAME_CLOCK_TOLERANCE: f64 = 0.001;

/// What mapscope measures of each pause.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Stopping {
    /// The default: the whole pause, with no probe hit inside it.
    NotMeasured,
    /// `--stw-stopping`: also the time to stop, with a probe hit inside each pause.
    Measured,
}

fn compare_with_runtime(version: &str, build_flags: &[&str], stopping: Stopping) {
    let binary = common::build_go("gcload", version, build_flags);
    let mut target = GoTarget::start(&binary, &["-duration", "2s", "-forced-gcs", "20"]);
    let mut mapscope = Mapscope::attach_with(
        target.pid(),
        match stopping {
            Stopping::NotMeasured => &[],
            Stopping::Measured => &["--stw-stopping"],
        },
    );
    let report: Report = target.run_load();
    assert_eq!(report.go_version, format!("go{version}"));
    assert!(
        report.num_gc >= 20,
        "the load should force at least 20 GCs: {report:?}"
    );

    let metrics =
        mapscope.scrape_until(Duration::from_secs(10), |m| m.gc_cycles() >= report.num_gc);
    let count = |gc: bool| {
        metrics.sum("mapscope_stw_pause_seconds_count", |l| {
            is_gc_reason(l) == gc
        }) as u64
    };
    let sum = |gc: bool| metrics.sum("mapscope_stw_pause_seconds_sum", |l| is_gc_reason(l) == gc);
    let stopping_count = |gc: bool| {
        metrics.sum("mapscope_stw_stopping_seconds_count", |l| {
            is_gc_reason(l) == gc
        }) as u64
    };
    let stopping_sum = |gc: bool| {
        metrics.sum("mapscope_stw_stopping_seconds_sum", |l| {
            is_gc_reason(l) == gc
        })
    };
    let runtime_pause_total = report.pause_total_ns as f64 / 1e9;

    let mut table = vec![format!(
        "Go {version} {build_flags:?}: mapscope vs the runtime's own view of the same window"
    )];
    let mut row = |what: &str, ours: String, theirs: String| {
        table.push(format!("  {what:<34} {ours:>14} {theirs:>22}"))
    };
    row(
        "GC cycles (NumGC)",
        metrics.gc_cycles().to_string(),
        report.num_gc.to_string(),
    );
    row(
        "GC cycles (/gc/cycles/total)",
        metrics.gc_cycles().to_string(),
        report.gc_cycles.to_string(),
    );
    row(
        "GC pause time, s (PauseTotalNs)",
        format!("{:.6}", sum(true)),
        format!("{runtime_pause_total:.6}"),
    );

    assert_eq!(
        metrics.gc_cycles(),
        report.num_gc,
        "GC cycles vs MemStats.NumGC"
    );
    assert_eq!(
        metrics.gc_cycles(),
        report.gc_cycles,
        "GC cycles vs /gc/cycles/total:gc-cycles"
    );

    if let Some(total_gc) = report.histogram("/sched/pauses/total/gc:seconds") {
        // Go 1.22+: the runtime's /sched/pauses/* histograms have the same definition.
        let total_other = report
            .histogram("/sched/pauses/total/other:seconds")
            .unwrap();
        let stopping_gc = report
            .histogram("/sched/pauses/stopping/gc:seconds")
            .unwrap();
        row(
            "GC pauses (/sched/pauses/total/gc)",
            count(true).to_string(),
            total_gc.count.to_string(),
        );
        row(
            "GC pause time, s (bucket bounds)",
            format!("{:.6}", sum(true)),
            format!("{:.6}..{:.6}", total_gc.sum_lo, total_gc.sum_hi),
        );
        row(
            "other pauses (/total/other)",
            count(false).to_string(),
            total_other.count.to_string(),
        );
        row(
            "other pause time, s (bucket bounds)",
            format!("{:.6}", sum(false)),
            format!("{:.6}..{:.6}", total_other.sum_lo, total_other.sum_hi),
        );
        row(
            "GC stops (/sched/pauses/stopping/gc)",
            stopping_count(true).to_string(),
            stopping_gc.count.to_string(),
        );
        row(
            "GC stopping time, s (bucket bounds)",
            format!("{:.6}", stopping_sum(true)),
            format!("{:.6}..{:.6}", stopping_gc.sum_lo, stopping_gc.sum_hi),
        );
        println!("{}", table.join("\n"));

        assert_eq!(
            count(true),
            total_gc.count,
            "GC pause count vs /sched/pauses/total/gc"
        );
        assert_eq!(
            count(false),
            total_other.count,
            "non-GC pause count vs /sched/pauses/total/other"
        );
        if stopping == Stopping::Measured {
            assert_eq!(
                stopping_count(true),
                stopping_gc.count,
                "GC stop count vs /sched/pauses/stopping/gc"
            );
        } else {
            assert_eq!(stopping_count(true), 0, "stopping measured unasked");
        }
        let error = (sum(true) - runtime_pause_total).abs() / runtime_pause_total;
        assert!(
            error <= SAME_CLOCK_TOLERANCE,
            "GC pause sum {} vs PauseTotalNs {runtime_pause_total}: {:.4}% apart",
            sum(true),
            error * 100.0
        );
        let within = |value: f64, lo: f64, hi: f64| value >= lo * 0.999 && value <= hi * 1.001;
        assert!(
            within(sum(true), total_gc.sum_lo, total_gc.sum_hi),
            "GC pause sum outside the runtime histogram's bounds"
        );
        assert!(
            within(sum(false), total_other.sum_lo, total_other.sum_hi),
            "non-GC pause sum outside the runtime histogram's bounds"
        );
        if stopping == Stopping::Measured && version_at_least(version, 23) {
            // Go 1.23+ hands over finishedStopping, so stopping time is the runtime's own too.
            assert!(
                within(stopping_sum(true), stopping_gc.sum_lo, stopping_gc.sum_hi),
                "GC stopping sum outside the runtime histogram's bounds"
            );
        }
    } else {
        // Go 1.19 and 1.21 have only /gc/pauses:seconds, whose mark-termination pauses end before the
        // world restarts (gcMarkTermination reads the clock before startTheWorldWithSema), and
        // no runtime start-of-stopping timestamp to reuse. mapscope measures up to the real
        // restart, so it reads somewhat higher; the counts must still agree exactly.
        let pauses = report.histogram("/gc/pauses:seconds").unwrap();
        row(
            "GC pauses (/gc/pauses)",
            count(true).to_string(),
            pauses.count.to_string(),
        );
        row(
            "read mem stats pauses",
            count(false).to_string(),
            report.read_mem_stats_stw.to_string(),
        );
        println!("{}", table.join("\n"));
        assert_eq!(
            count(true),
            pauses.count,
            "GC pause count vs /gc/pauses:seconds"
        );
        assert_eq!(
            count(false),
            report.read_mem_stats_stw,
            "the two ReadMemStats stops"
        );
        // Measured by the kernel clock at the stop's return, when asked for.
        assert_eq!(
            stopping_count(true) + stopping_count(false),
            match stopping {
                Stopping::Measured => count(true) + count(false),
                Stopping::NotMeasured => 0,
            },
            "stops measured"
        );
        let stopping_share = (stopping_sum(true) + stopping_sum(false)) / (sum(true) + sum(false));
        assert!(
            (0.0..1.0).contains(&stopping_share),
            "stopping is {stopping_share:.3} of the pauses"
        );
        let ratio = sum(true) / runtime_pause_total;
        assert!(
            (0.97..=1.5).contains(&ratio),
            "Go {version} GC pause sum {:.6} s is {ratio:.3}x PauseTotalNs",
            sum(true)
        );
    }

    // Per-target labels, and nothing unbounded among them.
    let labels = &metrics
        .0
        .iter()
        .find(|s| s.name == "mapscope_gc_cycles_total")
        .unwrap()
        .labels;
    assert_eq!(labels.get("pid"), Some(&target.pid().to_string()));
    assert_eq!(
        labels.get("go_version").map(String::as_str),
        Some(format!("go{version}").as_str())
    );
    assert!(
        labels
            .get("exe")
            .is_some_and(|exe| exe.starts_with("gcload"))
    );

    // SIGTERM: detach, summary on stdout, exit 0.
    mapscope.signal(libc::SIGTERM);
    let status = mapscope.wait(Duration::from_secs(10));
    assert!(
        status.success(),
        "mapscope exited with {status}; stderr:\n{}",
        mapscope.stderr.all()
    );
    let summary = mapscope.stdout.all();
    assert!(
        summary.contains(&format!("{} GC cycles completed", report.num_gc)),
        "{summary}"
    );
    assert!(
        summary.contains("gc_mark_termination") && summary.contains("p99"),
        "{summary}"
    );
    target.send("exit");
}

fn version_at_least(version: &str, minor: u32) -> bool {
    version
        .split('.')
        .nth(1)
        .and_then(|m| m.parse::<u32>().ok())
        .is_some_and(|m| m >= minor)
}

/// The same comparison with every core kept busy: pauses and GC cycles stay exact on a
/// loaded machine.
fn under_load(version: &str) {
    let _hogs = common::CpuHogs::start();
    compare_with_runtime(version, &[], Stopping::NotMeasured);
}

common::per_go_release! {
    under_load;
    pauses_match_runtime_under_load_go1_23 => "1.23.9",
    pauses_match_runtime_under_load_go1_27 => "1.27.3",
}

/// The default build of each release.
fn release_defaults(version: &str) {
    compare_with_runtime(version, &[], Stopping::NotMeasured);
}

common::per_go_release! {
    release_defaults;
    pauses_match_runtime_go1_19 => "1.19.8",
    pauses_match_runtime_go1_21 => "1.21.13",
    pauses_match_runtime_go1_22 => "1.22.10",
    pauses_match_runtime_go1_23 => "1.23.9",
    pauses_match_runtime_go1_24 => "1.24.11",
    pauses_match_runtime_go1_25 => "1.25.5",
    pauses_match_runtime_go1_26 => "1.26.6",
    pauses_match_runtime_go1_27 => "1.27.3",
}

/// `--stw-stopping`, on each way the releases hand over the end of stopping: the kernel clock
/// at the stop's return (1.21, and 1.22 beside its worldStop), the runtime's own
/// `finishedStopping` (1.23+).
fn with_stopping(version: &str) {
    compare_with_runtime(version, &[], Stopping::Measured);
}

common::per_go_release! {
    with_stopping;
    stopping_matches_runtime_go1_21 => "1.21.13",
    stopping_matches_runtime_go1_22 => "1.22.10",
    stopping_matches_runtime_go1_27 => "1.27.3",
}

/// Stripped binaries (no .symtab: functions come from the Go pclntab) and position-independent
/// ones (addresses relocated at load; probes are placed by file offset).
#[test]
#[ignore = "needs root and Go toolchains: run `cargo xtask test`"]
fn pauses_match_runtime_stripped_go1_23() {
    compare_with_runtime("1.23.9", &["-ldflags=-s -w"], Stopping::NotMeasured);
}

#[test]
#[ignore = "needs root and Go toolchains: run `cargo xtask test`"]
fn pauses_match_runtime_stripped_go1_27() {
    compare_with_runtime("1.27.3", &["-ldflags=-s -w"], Stopping::NotMeasured);
}

#[test]
#[ignore = "needs root and Go toolchains: run `cargo xtask test`"]
fn pauses_match_runtime_stripped_pie_go1_27() {
    compare_with_runtime(
        "1.27.3",
        &["-buildmode=pie", "-ldflags=-s -w"],
        Stopping::NotMeasured,
    );
}

/// One GODEBUG=gctrace=1 line's cycle number and concurrent-mark term in nanoseconds, with the
/// unit it was printed to (the runtime truncates to two significant digits, at most three
/// decimals of a millisecond: `fmtNSAsMS`), or `None` for other lines.
fn gctrace_mark(line: &str) -> Option<(u64, f64, f64)> {
    let cycle = line
        .strip_prefix("gc ")?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    let clock = line.split(": ").nth(1)?.split(" ms clock").next()?;
    let middle = clock.split('+').nth(1)?;
    let decimals = middle
        .split_once('.')
        .map_or(0, |(_, fraction)| fraction.len());
    let unit_ms = 10f64.powi(-i32::try_from(decimals).ok()?);
    Some((cycle, middle.parse::<f64>().ok()? * 1e6, unit_ms * 1e6))
}

/// Every GC cycle's concurrent mark phase, against the runtime's own gctrace for the same
/// cycles: as many observations as cycles gctrace printed while mapscope watched, and their sum
/// at or above gctrace's (which truncates each term) by less than a print unit per cycle, plus
/// 2 µs per cycle (the runtime takes `tMarkTerm` a `nanotime` before the stop's own start, which
/// mapscope reads). Cycle intervals: one fewer than cycles, summing to under the window.
/// Triggers: the cycles counted as forced and as heap or time equal runtime/metrics'
/// `/gc/cycles/forced` and `/gc/cycles/automatic` over the window.
fn cycle_phases_and_triggers_match_the_runtime(version: &str) {
    let binary = common::build_go("gcload", version, &[]);
    let mut command = std::process::Command::new(&binary);
    command
        .args(["-duration", "1s", "-forced-gcs", "10"])
        .env("GODEBUG", "gctrace=1")
        .stderr(std::process::Stdio::piped());
    let mut target = GoTarget::spawn(command);
    let gctrace = common::Lines::new(target.guard.0.stderr.take().unwrap());
    let mapscope = Mapscope::attach(target.pid());
    // gcload is idle until "go": every cycle gctrace prints from here on is one mapscope saw
    // whole. Its start-up cycles were printed before "ready".
    let before = gctrace
        .all()
        .lines()
        .filter_map(gctrace_mark)
        .map(|(cycle, _, _)| cycle)
        .max()
        .unwrap_or(0);
    let report = target.run_load();
    let metrics =
        mapscope.scrape_until(Duration::from_secs(10), |m| m.gc_cycles() >= report.num_gc);
    let marks: Vec<(u64, f64, f64)> = gctrace
        .all()
        .lines()
        .filter_map(gctrace_mark)
        .filter(|(cycle, _, _)| *cycle > before)
        .collect();
    let get = |name: &str| metrics.sum(name, |_| true);
    let (count, sum) = (
        get("mapscope_gc_concurrent_mark_seconds_count"),
        get("mapscope_gc_concurrent_mark_seconds_sum") * 1e9,
    );
    let printed: f64 = marks.iter().map(|(_, ns, _)| ns).sum();
    let units: f64 = marks.iter().map(|(_, _, unit)| unit).sum();
    let slack = units + 2_000.0 * marks.len() as f64;
    println!(
        "Go {version}: {} cycles in gctrace, {count} mark observations; mark sum {:.0} µs, \
         gctrace {:.0} µs (+ up to {:.0} µs of truncation and clock offset)",
        marks.len(),
        sum / 1e3,
        printed / 1e3,
        slack / 1e3
    );
    assert!(
        marks.len() as u64 >= report.num_gc,
        "{marks:?} vs {report:?}"
    );
    assert_eq!(count as usize, marks.len(), "one observation per cycle");
    assert!(
        sum >= printed - 1.0 && sum <= printed + slack,
        "mark sum {sum} ns vs gctrace {printed} ns (+{slack})"
    );
    let intervals = get("mapscope_gc_cycle_interval_seconds_count");
    assert_eq!(
        intervals as usize,
        marks.len() - 1,
        "intervals between cycles"
    );
    // Why each cycle started, against runtime/metrics over the same window: forced are the
    // load's runtime.GC calls, automatic the heap's (a time trigger needs two minutes without a
    // cycle, so none is expected here: one would show as a mismatch).
    let trigger = |name: &str| {
        metrics.sum("mapscope_gc_cycles_by_trigger_total", |labels| {
            labels.get("trigger").map(String::as_str) == Some(name)
        }) as u64
    };
    let runtime = |name: &str| report.counters[name];
    println!(
        "Go {version}: triggers heap {} time {} forced {}; runtime automatic {} forced {}",
        trigger("heap"),
        trigger("time"),
        trigger("forced"),
        runtime("/gc/cycles/automatic:gc-cycles"),
        runtime("/gc/cycles/forced:gc-cycles"),
    );
    assert_eq!(
        trigger("forced"),
        runtime("/gc/cycles/forced:gc-cycles"),
        "forced cycles"
    );
    assert_eq!(
        trigger("heap") + trigger("time"),
        runtime("/gc/cycles/automatic:gc-cycles"),
        "automatic cycles"
    );
    assert!(trigger("heap") > 0, "the load's heap triggered no cycle");
    // gcload was idle when mapscope attached: every cycle's trigger is known.
    assert_eq!(
        metrics.sum("mapscope_probe_events_dropped_total", |labels| {
            labels.get("reason").map(String::as_str) == Some("gc_trigger_unmatched")
        }),
        0.0
    );
    target.send("exit");
}

common::per_go_release! {
    cycle_phases_and_triggers_match_the_runtime;
    cycle_phases_and_triggers_match_the_runtime_go1_19 => "1.19.8",
    cycle_phases_and_triggers_match_the_runtime_go1_21 => "1.21.13",
    cycle_phases_and_triggers_match_the_runtime_go1_22 => "1.22.10",
    cycle_phases_and_triggers_match_the_runtime_go1_23 => "1.23.9",
    cycle_phases_and_triggers_match_the_runtime_go1_24 => "1.24.11",
    cycle_phases_and_triggers_match_the_runtime_go1_25 => "1.25.5",
    cycle_phases_and_triggers_match_the_runtime_go1_26 => "1.26.6",
    cycle_phases_and_triggers_match_the_runtime_go1_27 => "1.27.3",
}
