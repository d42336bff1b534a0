//! The Go runtime's vitals read from a target's memory, against the target's own runtime/metrics
//! at the same moment, for every supported release, with and without symbols, PIE or not.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a failure here is a test failure"
)]

mod common;

use std::time::Duration;

use common::{GoTarget, Mapscope};
use mapscope::model::vitals::{self, Kind, VITALS};

/// Set from the test, so a value read from the wrong place, or a default, cannot pass.
const GOGC: &str = "137";
const GOMEMLIMIT: &str = "3000000123";
/// With GOGC off, the heap goal comes from the memory limit alone: 64 MiB, well above what
/// gcload keeps (a limit the heap presses against keeps the scavenger busy, and the target is
/// no longer quiet).
const LIMIT_ONLY: (&str, &str) = ("off", "67108864");
const GOMAXPROCS: &str = "3";
/// Goroutines gcload starts blocked, so the goroutine count is known to be at least this.
const PARKED: &str = "250";

#[derive(Debug, serde::Deserialize)]
struct RuntimeHistogram {
    counts: Vec<u64>,
    /// Without the first and last edge (-Inf, +Inf).
    edges: Vec<f64>,
}

#[derive(Debug, serde::Deserialize)]
struct RuntimeView {
    metrics: std::collections::BTreeMap<String, f64>,
    histograms: std::collections::BTreeMap<String, RuntimeHistogram>,
    num_gc: u32,
    num_forced_gc: u32,
    gomaxprocs: u32,
}

/// The one vital the runtime changes by itself while the target is idle.
const SCAVENGED: &str = "/memory/classes/heap/released:bytes";

/// Whether mapscope exports `vital` (a histogram by its `_count` series).
fn exported(metrics: &common::Metrics, vital: &vitals::Vital) -> bool {
    match vital.kind {
        Kind::Histogram => metrics.has(&format!("{}_count", vital.prometheus_name())),
        _ => metrics.has(&vital.prometheus_name()),
    }
}

impl GoTarget {
    fn vitals(&mut self) -> RuntimeView {
        self.send("vitals");
        let line = self
            .stdout
            .wait_for("the target's vitals", Duration::from_secs(30), |line| {
                line.starts_with("{\"metrics\"")
            });
        serde_json::from_str(&line).unwrap_or_else(|error| panic!("bad vitals {line}: {error}"))
    }
}

/// After a GC load with forced cycles, the target goes quiet; mapscope's series are scraped
/// (its reads are at most a second old, so the test waits that long first), then the target
/// reads its own runtime/metrics before doing anything else. Every vital mapscope exports for
/// the release must equal the runtime's value exactly (the released heap, which the scavenger
/// changes on its own, must lie between the runtime's readings around it); on Go 1.19, whose runtime/metrics lacks
/// some, the same fields through the public API (MemStats' GC counts, `GOMAXPROCS(0)`) or the
/// settings the test gave (GOGC, GOMEMLIMIT). Vitals the release lacks must be absent.
fn vitals_match_the_runtime(version: &str) {
    let release: (u32, u32) = {
        let mut parts = version.split('.').map(|part| part.parse::<u32>().unwrap());
        (parts.next().unwrap(), parts.next().unwrap())
    };
    for (flags, (gogc, limit)) in [
        (&[][..], (GOGC, GOMEMLIMIT)),
        (&["-buildmode=pie"][..], (GOGC, GOMEMLIMIT)),
        (&["-ldflags=-s -w"][..], LIMIT_ONLY),
        (
            &["-buildmode=pie", "-ldflags=-s -w"][..],
            (GOGC, GOMEMLIMIT),
        ),
    ] {
        let binary = common::build_go("gcload", version, flags);
        let mut command = std::process::Command::new(&binary);
        command
            .args(["-duration", "500ms", "-forced-gcs", "3", "-parked", PARKED])
            .env("GOGC", gogc)
            .env("GOMEMLIMIT", limit)
            .env("GOMAXPROCS", GOMAXPROCS);
        let mut target = GoTarget::spawn(command);
        let mut mapscope = Mapscope::attach(target.pid());
        // gcload is idle until "go": this is the runtime as mapscope found it at attach.
        let at_attach = target.vitals();
        target.run_load();
        // The first answer allocates; after it the target is quiet.
        let before = target.vitals();
        std::thread::sleep(Duration::from_millis(1200));
        let metrics = mapscope.scrape();
        let runtime = target.vitals();
        let mut compared = 0;
        for vital in VITALS {
            let name = vital.prometheus_name();
            if !vital.exported_for(release) {
                assert!(
                    !exported(&metrics, vital),
                    "Go {version} {flags:?}: {name} exported, but its runtime lacks it"
                );
                continue;
            }
            assert!(
                exported(&metrics, vital),
                "Go {version} {flags:?}: {name} missing; mapscope's log:\n{}",
                mapscope.stderr.all()
            );
            if vital.kind == Kind::Histogram {
                compare_histogram(&metrics, &name, [&before, &runtime], vital.name, version);
                compared += 1;
                continue;
            }
            let ours = metrics.sum(&name, |_| true);
            let theirs = match runtime.metrics.get(vital.name) {
                Some(&value) => value,
                None => {
                    assert!(release < vital.since, "Go {version}: no {}", vital.name);
                    match vital.name {
                        // runtime/metrics reports GOGC=off as uint64(-1).
                        "/gc/gogc:percent" => gogc.parse().unwrap_or(u64::MAX as f64),
                        "/gc/gomemlimit:bytes" => limit.parse().unwrap(),
                        "/sched/gomaxprocs:threads" => f64::from(runtime.gomaxprocs),
                        other => panic!("Go {version}: no runtime view of {other}"),
                    }
                }
            };
            if vital.name == SCAVENGED {
                // The background scavenger returns free pages to the OS on its own, while the
                // target is otherwise idle (8 MB between the two readings on a busy machine):
                // mapscope's read, at most a second before the scrape, lies between the
                // runtime's readings before and after it. (Scavenging moves bytes from
                // committed to released, so the total, compared exactly, holds still.)
                let before = before.metrics[vital.name];
                assert!(
                    before.min(theirs) <= ours && ours <= before.max(theirs),
                    "Go {version} {flags:?}: {name} {ours}, the runtime's {before} then {theirs}"
                );
            } else {
                assert_eq!(ours, theirs, "Go {version} {flags:?}: {name}");
            }
            compared += 1;
        }
        // The GC counts agree with MemStats too, and the settings are the test's.
        let cycles = metrics.sum("mapscope_go_gc_cycles_total_gc_cycles_total", |_| true);
        let forced = metrics.sum("mapscope_go_gc_cycles_forced_gc_cycles_total", |_| true);
        assert_eq!(cycles, f64::from(runtime.num_gc), "Go {version}: NumGC");
        assert_eq!(forced, f64::from(runtime.num_forced_gc), "NumForcedGC");
        assert!(
            forced >= 1.0 && cycles > forced,
            "{cycles} cycles, {forced} forced"
        );
        assert_eq!(runtime.gomaxprocs.to_string(), GOMAXPROCS);
        let goroutines = metrics.sum("mapscope_go_sched_goroutines_goroutines", |_| true);
        assert!(
            goroutines > PARKED.parse::<f64>().unwrap(),
            "Go {version}: {goroutines} goroutines"
        );
        let goal = metrics.sum("mapscope_go_gc_heap_goal_bytes", |_| true);
        println!(
            "Go {version} {flags:?}: {compared} vitals equal the runtime's (GOGC {gogc}, \
             GOMEMLIMIT {limit}, heap goal {goal})"
        );
        if gogc == "off" {
            assert!(
                goal < limit.parse::<f64>().unwrap(),
                "the limit sets the goal"
            );
        }
        check_summary(&mut mapscope, &mut target, &at_attach, version);
        target.send("exit");
    }
}

/// The exit summary's runtime line: the GC's share of the CPU between attach and detach and the
/// heap goal at detach, against the runtime's own figures, and the cycles per minute against
/// the summary's first line (whose cycle count `compare_with_runtime` checks against the
/// runtime). The target's figures at detach are read after mapscope's (the target was quiet in
/// between): its answers allocate after reading, which moves a heap goal set by GOMEMLIMIT.
fn check_summary(
    mapscope: &mut Mapscope,
    target: &mut GoTarget,
    start: &RuntimeView,
    version: &str,
) {
    mapscope.signal(libc::SIGTERM);
    assert!(mapscope.wait(Duration::from_secs(30)).success());
    let end = &target.vitals();
    let summary = mapscope.stdout.all();
    let line = summary
        .lines()
        .find(|line| line.trim_start().starts_with("runtime:"))
        .unwrap_or_else(|| panic!("Go {version}: no runtime line:\n{summary}"));
    // Cycles per minute: the cycles the first line says, over the time it says it watched.
    let (watched, cycles) = summary
        .lines()
        .next()
        .and_then(|first| {
            let rest = first.split("watched for ").nth(1)?;
            let (watched, rest) = rest.split_once(": ")?;
            let cycles = rest.split(' ').next()?.parse::<f64>().ok()?;
            let seconds = watched.strip_suffix('s')?.parse::<f64>().ok()?;
            Some((seconds, cycles))
        })
        .unwrap_or_else(|| panic!("no watched time and cycles:\n{summary}"));
    let per_minute: f64 = line
        .split(" GC cycles/min")
        .next()
        .and_then(|before| before.rsplit(' ').next())
        .and_then(|rate| rate.parse().ok())
        .unwrap_or_else(|| panic!("no cycles per minute: {line}"));
    let expected = cycles / watched * 60.0;
    assert!(
        (per_minute - expected).abs() <= expected * 0.01 + 0.1,
        "{per_minute}/min vs {cycles} cycles in {watched}s: {line}"
    );
    let goal = end.metrics["/gc/heap/goal:bytes"];
    assert!(
        line.contains(&format!(
            "heap goal {}",
            mapscope::export::summary::bytes(goal)
        )),
        "Go {version}: {line} (goal {goal})"
    );
    let cpu = |view: &RuntimeView, class: &str| {
        view.metrics
            .get(&format!("/cpu/classes/{class}:cpu-seconds"))
            .copied()
    };
    match (cpu(start, "gc/total"), cpu(end, "gc/total")) {
        (Some(gc_start), Some(gc_end)) => {
            let total = cpu(end, "total").unwrap() - cpu(start, "total").unwrap();
            let share = 100.0 * (gc_end - gc_start) / total;
            assert!(
                line.contains(&format!("GC took {share:.1}% of the CPU")),
                "Go {version}: {line} ({share}%)"
            );
        }
        // Go 1.19 has no CPU classes.
        _ => assert!(!line.contains("of the CPU"), "{line}"),
    }
    println!("Go {version}: {}", line.trim());
}

/// A histogram vital: mapscope's bucket edges are the runtime's, and each cumulative count
/// mapscope exports lies between the runtime's own, summed up to that bound, read just before
/// and just after mapscope's read. Not exactly one of them: the target's goroutine records a
/// scheduling latency of its own each time it wakes up to answer (a handful in all, checked).
fn compare_histogram(
    metrics: &common::Metrics,
    name: &str,
    [before, after]: [&RuntimeView; 2],
    runtime_name: &str,
    version: &str,
) {
    let runtime = |view: &RuntimeView| {
        let histogram = &view.histograms[runtime_name];
        let edges: Vec<f64> = std::iter::once(f64::NEG_INFINITY)
            .chain(histogram.edges.iter().copied())
            .chain(std::iter::once(f64::INFINITY))
            .collect();
        assert_eq!(edges.len(), histogram.counts.len() + 1);
        let layout = if version.starts_with("1.19") {
            vitals::TimeHistogramLayout::Go119
        } else {
            vitals::TimeHistogramLayout::Go121
        };
        assert_eq!(layout.edges(), edges, "Go {version}: {name} bucket edges");
        vitals::cumulative(&edges, &histogram.counts, &vitals::latency_bounds())
    };
    let (low, high) = (runtime(before), runtime(after));
    assert!(
        low.count > 0,
        "Go {version}: no scheduling latencies recorded"
    );
    assert!(
        high.count - low.count <= 16,
        "Go {version}: the target was not quiet: {} then {} latencies",
        low.count,
        high.count
    );
    let bucket = |bound: f64| {
        metrics.sum(&format!("{name}_bucket"), |labels| {
            labels.get("le").and_then(|le| le.parse::<f64>().ok()) == Some(bound)
        }) as u64
    };
    for (&(bound, lowest), &(_, highest)) in low.buckets.iter().zip(&high.buckets) {
        let ours = bucket(bound);
        assert!(
            (lowest..=highest).contains(&ours),
            "Go {version}: {name} le={bound}: {ours} not in {lowest}..={highest}"
        );
    }
    let count = metrics.sum(&format!("{name}_count"), |_| true) as u64;
    assert!((low.count..=high.count).contains(&count), "{count}");
    assert_eq!(bucket(f64::INFINITY), count);
    // Enough spread to mean something: the load's goroutines waited at several scales.
    let used = low
        .buckets
        .windows(2)
        .filter(|pair| pair[1].1 > pair[0].1)
        .count();
    assert!(used >= 3, "Go {version}: {low:?}");
}

common::per_go_release! {
    vitals_match_the_runtime;
    vitals_match_the_runtime_go1_19 => "1.19.8",
    vitals_match_the_runtime_go1_21 => "1.21.13",
    vitals_match_the_runtime_go1_22 => "1.22.10",
    vitals_match_the_runtime_go1_23 => "1.23.9",
    vitals_match_the_runtime_go1_24 => "1.24.11",
    vitals_match_the_runtime_go1_25 => "1.25.5",
    vitals_match_the_runtime_go1_26 => "1.26.6",
    vitals_match_the_runtime_go1_27 => "1.27.3",
}

/// A release newer than the table: the vitals are read only where the binary's DWARF confirms
/// the newest row's layout, and otherwise left out with a warning, never guessed. Go 1.27 and
/// Go 1.23 binaries claiming to be Go 1.99: the first (same layout as the newest row) gets its
/// vitals, equal to the runtime's; the second (another layout) and a stripped 1.27 (nothing to
/// confirm with) get none.
#[test]
#[ignore = "needs root and Go toolchains: run `cargo xtask test`"]
fn unverified_layouts_give_no_vitals() {
    for (version, flags, confirmed, why) in [
        ("1.27.3", &[][..], true, ""),
        ("1.23.9", &[][..], false, "its DWARF shows another layout"),
        (
            "1.27.3",
            &["-ldflags=-s -w"][..],
            false,
            "has no DWARF to confirm",
        ),
    ] {
        let real = common::build_go("gcload", version, flags);
        let name = format!("gcload-{version}-{}-claims-go1.99", flags.len());
        let newer = common::with_build_info_version(&real, "go1.99.0", &name);
        let mut command = std::process::Command::new(&newer);
        command.args(["-duration", "300ms", "-forced-gcs", "1"]);
        let mut target = GoTarget::spawn(command);
        let mapscope = Mapscope::attach(target.pid());
        target.run_load();
        let before = target.vitals();
        std::thread::sleep(Duration::from_millis(1200));
        let metrics = mapscope.scrape();
        let runtime = target.vitals();
        let log = mapscope.stderr.all();
        let exported: Vec<&str> = VITALS
            .iter()
            .filter(|vital| exported(&metrics, vital))
            .map(|vital| vital.name)
            .collect();
        if confirmed {
            assert_eq!(exported.len(), VITALS.len(), "{log}");
            for vital in VITALS {
                if vital.kind == Kind::Histogram {
                    let name = vital.prometheus_name();
                    compare_histogram(&metrics, &name, [&before, &runtime], vital.name, "1.99");
                    continue;
                }
                assert_eq!(
                    metrics.sum(&vital.prometheus_name(), |_| true),
                    runtime.metrics[vital.name],
                    "{}",
                    vital.name
                );
            }
        } else {
            assert!(exported.is_empty(), "Go {version} {flags:?}: {exported:?}");
            assert!(
                log.contains("vitals will not be read") && log.contains(why),
                "Go {version} {flags:?}: {log}"
            );
        }
        target.send("exit");
    }
}
