//! What mapscope says it costs a target against what it measurably costs it: the same program's
//! own throughput run alone and under `mapscope run`, on this machine, in the same test.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a failure here is a test failure"
)]

mod common;

use std::{path::Path, process::Command, time::Duration};

use common::{GoTarget, MAPSCOPE, Mapscope, NEWEST_GO};

/// How far the reported share of the target's CPU may be from the measured slowdown
/// (1 − throughput attached / alone): 0.05 plus a third of the slowdown. The estimate counts
/// CPU time in the probes; the slowdown also holds what the estimate cannot see (cache misses
/// after each trap, the calibration's own CPU at start on a two-core machine) and noise.
fn agrees(reported: f64, slowdown: f64) -> bool {
    (reported - slowdown).abs() <= 0.05 + slowdown / 3.0
}

/// A gcbench run's JSON report, alone or under `mapscope run` with `flags`; with mapscope, also
/// the share of the target's CPU the exit summary says mapscope cost it.
fn gcbench(
    binary: &Path,
    mapscope_flags: Option<&[&str]>,
    args: &[&str],
) -> (serde_json::Value, Option<f64>) {
    let output = match mapscope_flags {
        None => Command::new(binary).args(args).output().unwrap(),
        Some(flags) => Command::new(MAPSCOPE)
            .args(["run", "--listen", "127.0.0.1:0"])
            .args(flags)
            .arg("--")
            .arg(binary)
            .args(args)
            .env("NO_COLOR", "1")
            .output()
            .unwrap(),
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}\n{}",
        stdout,
        String::from_utf8_lossy(&output.stderr)
    );
    let report = stdout
        .lines()
        .find(|line| line.starts_with('{'))
        .unwrap_or_else(|| panic!("no report in {stdout}"));
    let cost = stdout.lines().find_map(|line| {
        let share = line
            .trim()
            .strip_prefix("cost to the target: ")?
            .split('%')
            .next()?;
        Some(share.parse::<f64>().unwrap() / 100.0)
    });
    if mapscope_flags.is_some() {
        assert!(cost.is_some(), "no cost line in the summary:\n{stdout}");
    }
    (serde_json::from_str(report).unwrap(), cost)
}

/// One measurement at a time: the tests of a file run in parallel, and each one's throughput
/// is its own to measure on this two-core machine.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn check(name: &str, reported: f64, slowdown: f64) {
    println!("{name}: reported {reported:.3} of the target's CPU, measured slowdown {slowdown:.3}");
    assert!(
        agrees(reported, slowdown),
        "{name}: mapscope reported {reported:.3} of the target's CPU, but slowed it by {slowdown:.3}"
    );
}

/// A program that grows small maps as fast as it can: every growth is a map event probe hit.
#[test]
#[ignore = "needs root and Go toolchains: run `cargo xtask test`"]
fn map_growth_estimate_agrees_with_the_slowdown() {
    let _alone = one_at_a_time();
    let binary = common::build_go("gcbench", NEWEST_GO, &[]);
    let args = ["-mode", "smallmaps", "-duration", "4s"];
    let (alone, _) = gcbench(&binary, None, &args);
    let (attached, reported) = gcbench(&binary, Some(&["--map-discovery", "off"]), &args);
    // ns per map: the slower, the fewer maps per second.
    let ratio = alone["ns_per_map"].as_f64().unwrap() / attached["ns_per_map"].as_f64().unwrap();
    let reported = reported.unwrap();
    // The probes must matter here, or this checks nothing.
    assert!(reported > 0.1, "map events cost only {reported}");
    check("map growth", reported, 1.0 - ratio);
}

/// Every allocation probed (`--alloc-exact`): the probes dominate the target's time.
#[test]
#[ignore = "needs root and Go toolchains: run `cargo xtask test`"]
fn exact_allocation_estimate_agrees_with_the_slowdown() {
    let _alone = one_at_a_time();
    let binary = common::build_go("gcbench", NEWEST_GO, &[]);
    let args = ["-mode", "alloc", "-duration", "4s"];
    let (alone, _) = gcbench(&binary, None, &args);
    let (attached, reported) = gcbench(&binary, Some(&["--alloc-exact"]), &args);
    let ratio = attached["ops"].as_f64().unwrap() / alone["ops"].as_f64().unwrap();
    let reported = reported.unwrap();
    assert!(reported > 0.3, "exact counting cost only {reported}");
    check("exact allocations", reported, 1.0 - ratio);
}

/// A quiet service: GC cycles and little else. Its probes must cost it next to nothing, and the
/// figures must add up: the CPU charged to each family is its hits × its cost per hit.
/// (mapscope's own CPU is not bounded here: it is small in absolute terms, but a target that
/// does almost nothing makes any share of it look large.)
#[test]
#[ignore = "needs root and Go toolchains: run `cargo xtask test`"]
fn a_quiet_target_costs_next_to_nothing_and_the_figures_add_up() {
    let _alone = one_at_a_time();
    let binary = common::build_go("gcload", NEWEST_GO, &[]);
    let mut target = GoTarget::start(
        &binary,
        &["-duration", "300ms", "-workers", "0", "-forced-gcs", "10"],
    );
    let mapscope = Mapscope::attach(target.pid());
    let mut metrics = mapscope.scrape();
    for _ in 0..4 {
        target.run_load();
        std::thread::sleep(Duration::from_secs(1));
        metrics = mapscope.scrape();
    }
    let probes = metrics.sum("mapscope_probe_overhead_ratio", |_| true);
    println!(
        "quiet target: probes {probes} of its CPU ({:?}), mapscope's own work {}",
        metrics
            .0
            .iter()
            .filter(|sample| sample.name == "mapscope_probe_overhead_ratio" && sample.value > 0.0)
            .map(|sample| (sample.labels["probe"].clone(), sample.value))
            .collect::<Vec<_>>(),
        metrics.sum("mapscope_own_cpu_ratio", |_| true),
    );
    assert!((0.0..0.01).contains(&probes), "{probes}");
    let stw = |name: &str| metrics.sum(name, |labels| labels["probe"] == "stw");
    let (hits, seconds, cost) = (
        stw("mapscope_probe_hits_total"),
        stw("mapscope_probe_cpu_seconds_total"),
        stw("mapscope_probe_hit_cost_seconds"),
    );
    println!("stw: {hits} hits, {seconds} s, {cost} s a hit");
    assert!(hits > 0.0);
    // A hit costs between 100 ns and 20 µs on any machine mapscope runs on.
    assert!((1e-7..2e-5).contains(&cost), "{cost}");
    // Hits before the first reading (the calibration takes a moment) are not charged.
    assert!(
        seconds <= hits * cost * 1.5 && seconds > 0.0,
        "{seconds} vs {hits} × {cost}"
    );
}
