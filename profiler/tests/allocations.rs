//! Allocation estimates from the runtime's own sampling against the runtime's exact counters
//! (runtime/metrics /gc/heap/allocs:bytes and :objects) for the same window.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a failure here is a test failure"
)]

mod common;

use std::time::Duration;

use common::{GoTarget, Mapscope};

/// The estimates are sums over Poisson samples, so their relative standard error is about
/// 1/sqrt(samples). The test allows five standard errors, plus 1% for the few allocations the
/// target makes outside its measured window while mapscope watches (reading metrics, JSON).
fn tolerance(samples: f64) -> f64 {
    5.0 / samples.sqrt() + 0.01
}

fn compare(version: &str) {
    let binary = common::build_go("gcload", version, &[]);
    let mut target = GoTarget::start(&binary, &["-duration", "2s", "-forced-gcs", "5"]);
    let mapscope = Mapscope::attach_unbudgeted(target.pid());
    let report = target.run_load();
    // mapscope reads the kernel's counts every second.
    std::thread::sleep(Duration::from_millis(1500));
    let metrics = mapscope.scrape();
    let get = |name: &str| metrics.sum(name, |_| true);
    let (bytes, objects, samples) = (
        get("mapscope_alloc_bytes_total"),
        get("mapscope_alloc_objects_total"),
        get("mapscope_alloc_samples_total"),
    );
    let runtime_bytes = report.counters["/gc/heap/allocs:bytes"] as f64;
    let runtime_objects = report.counters["/gc/heap/allocs:objects"] as f64;
    let bound = tolerance(samples);
    let off = |ours: f64, theirs: f64| (ours - theirs).abs() / theirs;
    println!(
        "Go {version}: {samples} samples (rate {}), bound {:.2}%\n  bytes   mapscope {bytes:.0} runtime {runtime_bytes} ({:+.2}%)\n  objects mapscope {objects:.0} runtime {runtime_objects} ({:+.2}%)",
        get("mapscope_alloc_sample_rate_bytes"),
        bound * 100.0,
        (bytes / runtime_bytes - 1.0) * 100.0,
        (objects / runtime_objects - 1.0) * 100.0,
    );
    assert!(
        samples >= 1000.0,
        "too few samples for a meaningful check: {samples}"
    );
    assert_eq!(
        get("mapscope_alloc_sample_rate_bytes"),
        524_288.0,
        "the runtime's default rate"
    );
    assert!(
        off(bytes, runtime_bytes) <= bound,
        "bytes {bytes} vs {runtime_bytes}"
    );
    assert!(
        off(objects, runtime_objects) <= bound,
        "objects {objects} vs {runtime_objects}"
    );

    // The exit summary says the same, to its three significant figures (0.5% more).
    let mut mapscope = mapscope;
    mapscope.signal(libc::SIGTERM);
    assert!(mapscope.wait(Duration::from_secs(60)).success());
    let summary = mapscope.stdout.all();
    let line = summary
        .lines()
        .find_map(|line| line.trim().strip_prefix("allocations: "))
        .unwrap_or_else(|| panic!("no allocations line:\n{summary}"));
    let words: Vec<&str> = line.split_whitespace().collect();
    let (summary_bytes, summary_objects) = (parse_figure(words[0]), parse_figure(words[2]));
    println!("  summary: {line}");
    assert!(
        off(summary_bytes, runtime_bytes) <= bound + 0.005,
        "summary bytes {summary_bytes} vs {runtime_bytes}: {line}"
    );
    assert!(
        off(summary_objects, runtime_objects) <= bound + 0.005,
        "summary objects {summary_objects} vs {runtime_objects}: {line}"
    );
    target.send("exit");
}

/// A figure as the summary writes it: `5.16GiB`, `812MiB`, `4.09M`, `950`.
fn parse_figure(text: &str) -> f64 {
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let scale = match unit.trim_end_matches(',') {
        "" | "B" => 1.0,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "KiB" => 1024.0,
        "MiB" => 1024.0 * 1024.0,
        "GiB" => 1024.0 * 1024.0 * 1024.0,
        "TiB" => 1024.0_f64.powi(4),
        other => panic!("unit {other:?} in {text:?}"),
    };
    number.parse::<f64>().unwrap() * scale
}

/// A program that never references runtime.MemProfile has sampling turned off by the linker
/// (MemProfileRate = 0). Without a budget mapscope does not count its allocations itself (that
/// would put a probe on every allocation, unasked): it must say so rather than report zero
/// allocations as fact. (With the default budget it counts them: tests/overhead.rs.)
#[test]
#[ignore = "needs root and Go toolchains: run `cargo xtask test`"]
fn sampling_off_is_reported() {
    let nosampling = common::build_go("nosampling", common::NEWEST_GO, &[]);
    let mut mapscope = Mapscope::start(&[
        "run",
        "--listen",
        "127.0.0.1:0",
        "--max-overhead",
        "0",
        "--",
        nosampling.to_str().unwrap(),
    ]);
    let warning = mapscope.stderr.wait_for(
        "the sampling-off warning",
        Duration::from_secs(10),
        |line| line.contains("runtime.MemProfileRate to 0"),
    );
    assert!(warning.contains("allocation sampling off"), "{warning}");
    let metrics = mapscope.scrape();
    assert_eq!(
        metrics.sum("mapscope_alloc_sample_rate_bytes", |_| true),
        0.0
    );
    mapscope.send("exit");
    assert!(mapscope.wait(Duration::from_secs(20)).success());
}

/// Exact mode counts every allocation: the count must equal the runtime's own object count for
/// the window, but for the few allocations the target makes outside it while mapscope watches
/// (reading stdin, writing the report): at most 2000, or 0.1%.
fn compare_exact(version: &str) {
    let binary = common::build_go("gcload", version, &[]);
    let mut target = GoTarget::start(&binary, &["-duration", "1s", "-forced-gcs", "2"]);
    let pid = target.pid().to_string();
    let mapscope = Mapscope::start(&[
        "attach",
        "--pid",
        &pid,
        "--listen",
        "127.0.0.1:0",
        "--alloc-exact",
    ]);
    assert!(
        mapscope.stderr.all().contains("uprobe on every allocation"),
        "the overhead warning"
    );
    let report = target.run_load();
    std::thread::sleep(Duration::from_millis(1500));
    let metrics = mapscope.scrape();
    let exact = metrics.sum("mapscope_alloc_exact_objects_total", |_| true);
    let runtime = report.counters["/gc/heap/allocs:objects"] as f64;
    println!(
        "Go {version} exact mode: mapscope {exact} objects, runtime {runtime} ({:+})",
        exact - runtime
    );
    assert!(
        runtime > 10_000.0,
        "the load allocated too little: {runtime}"
    );
    assert!(
        (exact - runtime).abs() <= (runtime * 0.001).max(2000.0),
        "exact {exact} vs runtime {runtime}"
    );
    target.send("exit");
}

#[test]
#[ignore = "needs root and Go toolchains: run `cargo xtask test`"]
fn exact_mode_counts_every_allocation() {
    // mallocgc alone (1.19, 1.23, 1.24), and with the size-specialized variants (1.26, 1.27).
    for version in ["1.19.8", "1.23.9", "1.24.11", "1.26.6", "1.27.3"] {
        compare_exact(version);
    }
}

common::per_go_release! {
    compare;
    allocations_match_runtime_go1_19 => "1.19.8",
    allocations_match_runtime_go1_21 => "1.21.13",
    allocations_match_runtime_go1_22 => "1.22.10",
    allocations_match_runtime_go1_23 => "1.23.9",
    allocations_match_runtime_go1_24 => "1.24.11",
    allocations_match_runtime_go1_25 => "1.25.5",
    allocations_match_runtime_go1_26 => "1.26.6",
    allocations_match_runtime_go1_27 => "1.27.3",
}
