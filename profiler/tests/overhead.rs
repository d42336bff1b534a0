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
    // Held by no budget: the estimate of the probes' whole cost is what is checked here.
    let (attached, reported) = gcbench(
        &binary,
        Some(&["--map-discovery", "off", "--max-overhead", "0"]),
        &args,
    );
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
    let (attached, reported) = gcbench(
        &binary,
        Some(&["--alloc-exact", "--max-overhead", "0"]),
        &args,
    );
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
    // Measured 0.0135: stop-the-world 0.0049 and GC trigger 0.0025 (a few hits per cycle, its
    // ten forced cycles a load being most of what it does), and the first discovery window
    // 0.0060. The stop-the-world and map probes sit on instructions the kernel steps out of
    // line (RET, and past a frame's setup), about 5.6 µs a trap here against 1.1 µs for an
    // emulated one.
    assert!((0.0..0.02).contains(&probes), "{probes}");
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

/// A load whose sampled-allocation probe would cost the target far more than the budget: the
/// runtime samples one allocation per 2 KiB instead of 512 KiB (GODEBUG=memprofilerate).
const COSTLY_SAMPLING: &str = "GODEBUG=memprofilerate=2048";

/// The budget of the governor test: large enough that the duty cycle stays well above its
/// floor, so that cycles are short (a few seconds) and the measured window spans many.
const BUDGET: &str = "0.1";

/// gcbench's allocation load with costly sampling, for `seconds`, then `idle` seconds of
/// nothing (through `env`, which `mapscope run` follows to the Go program).
fn costly_load(binary: &Path, seconds: u32, idle: u32) -> Vec<String> {
    [
        "env",
        COSTLY_SAMPLING,
        binary.to_str().unwrap(),
        "-mode",
        "alloc",
        "-duration",
        &format!("{seconds}s"),
        "-then-idle",
        &format!("{idle}s"),
    ]
    .map(str::to_owned)
    .to_vec()
}

fn ops_per_second(report: &str) -> f64 {
    let report: serde_json::Value = serde_json::from_str(report).unwrap();
    report["ops"].as_f64().unwrap() / report["seconds"].as_f64().unwrap()
}

/// The governor holds the allocation sampler of a program that samples 256 times as often as
/// the default: the cost mapscope reports stays within the budget, the scaled allocation
/// estimates agree with the runtime's exact count over the same window, and once the load
/// stops the sampler is attached all the time again. (This load's throughput is not the
/// measure: on a program allocating flat out with a GC cycle every millisecond, each probe
/// hit also delays the stop-the-world pauses the other threads wait in, so it slows the
/// program more than the CPU time it takes; see docs/METRICS.md. The map test below is held
/// by throughput.)
#[test]
#[ignore = "needs root and Go toolchains: run `cargo xtask test`"]
fn the_governor_holds_the_allocation_sampler_and_scales_its_estimates() {
    let _alone = one_at_a_time();
    let binary = common::build_go("gcbench", NEWEST_GO, &[]);
    let run = |budget: &str, seconds: u32, idle: u32| {
        let mut args: Vec<String> = ["run", "--listen", "127.0.0.1:0", "--max-overhead", budget]
            .map(str::to_owned)
            .to_vec();
        args.push("--".into());
        args.extend(costly_load(&binary, seconds, idle));
        Mapscope::start(&args.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let report = |mapscope: &Mapscope, seconds: u64| {
        mapscope.stdout.wait_for(
            "gcbench's report",
            Duration::from_secs(seconds + 30),
            |line| line.starts_with('{'),
        )
    };
    let output = Command::new("env")
        .args(costly_load(&binary, 15, 0))
        .output()
        .unwrap();
    let alone = ops_per_second(String::from_utf8_lossy(&output.stdout).trim());

    // Without a budget: what the family costs.
    let ungoverned = run("0", 15, 2);
    std::thread::sleep(Duration::from_secs(12));
    let unbounded = ungoverned
        .scrape()
        .sum("mapscope_probe_overhead_ratio", |labels| {
            labels["probe"] == "alloc"
        });
    let free = ops_per_second(&report(&ungoverned, 15));
    drop(ungoverned);

    // With one: the estimate over 64 s (eight of the governor's cycles of at most 8 s) well
    // inside the load, against the runtime's own count (its heap statistics, read by the same
    // scrapes).
    let governed = run(BUDGET, 80, 40);
    std::thread::sleep(Duration::from_secs(10));
    let before = governed.scrape();
    std::thread::sleep(Duration::from_secs(64));
    let after = governed.scrape();
    let held = ops_per_second(&report(&governed, 10));
    let delta = |name: &str| after.sum(name, |_| true) - before.sum(name, |_| true);
    let estimated = delta("mapscope_alloc_bytes_total");
    let exact = delta("mapscope_go_gc_heap_allocs_bytes_total");
    let duty = after.sum("mapscope_probe_duty_cycle", |labels| {
        labels["probe"] == "alloc"
    });
    let total = after.sum("mapscope_overhead_ratio", |_| true);
    println!(
        "alone {:.2} Mops/s; ungoverned {:.2} Mops/s, the sampler costing {unbounded:.3} of the \
         target's CPU; governed {:.2} Mops/s, duty {duty:.3}, everything costing {total:.4} over \
         the last minute; allocated {:.0} MB in 64 s, estimated {:.0} MB",
        alone / 1e6,
        free / 1e6,
        held / 1e6,
        exact / 1e6,
        estimated / 1e6
    );
    let budget: f64 = BUDGET.parse().unwrap();
    // Well over the budget, so that the governor must cut it. (Three times it was the bound
    // while the first statistics window came 0.3 s after attach, in the program's start, when
    // new stacks are stored and each run costs more: 0.41 measured against a 30% slowdown.
    // Measured later, as now, it reads 0.29-0.35, as the slowdown says.)
    assert!(
        unbounded > 2.5 * budget,
        "the load is not costly enough: {unbounded}"
    );
    assert!(duty < 1.0, "the sampler was not cycled");
    // The minute the ratio covers holds seven or eight of the cycles' on parts, depending on
    // where it starts: one more than its share costs a thirteenth of the governed part more.
    // Measured since the duty is planned on the CPU time the target uses while on and on a
    // cost that falls only half way: 0.093-0.106 (before: 0.104-0.120).
    assert!(total <= budget * 1.1, "{total} over the budget {budget}");
    assert!(
        held > free,
        "governed {held} ops/s, no faster than ungoverned {free}"
    );
    // Sampling error of the runtime's samples (a few hundred thousand: under 1%), and the
    // cycles cut at the window's two ends: a cycle's counts, scaled up, all come after its on
    // part, so the window's start counts the part of its first cycle before it, and its end
    // misses the part of its last cycle in it. That is at most one cycle of the eight
    // (12.5%), and mostly much less. Each cycle's share of the work is settled from the
    // runtime's own count during its on part: measured -4.4% to +13.1% (when the on part before
    // predicted it: -1.6% to +16.4%, the pace changing from one part to the next).
    assert!(
        (estimated - exact).abs() / exact < 0.15,
        "estimated {estimated} against {exact} allocated"
    );

    // The load stops: the sampler goes back to being attached all the time.
    common::wait_until(
        &governed,
        "the sampler attached all the time again after the load stopped",
        Duration::from_secs(30),
        |metrics| {
            metrics.sum("mapscope_probe_duty_cycle", |labels| {
                labels["probe"] == "alloc"
            }) == 1.0
        },
    );
    // Over the whole run every cycle has settled, the one the load stopped in included: the
    // estimate against the runtime's count since it started (mapscope ran it, so both start
    // together). Each off part's first half stands with the on part before it: when all of an
    // off part stood with the on part after it, the work of the one the load stopped in was
    // lost, 18-27% of a 23-29 s run's; now -0.2% to -0.06%.
    std::thread::sleep(Duration::from_secs(2));
    let whole = governed.scrape();
    let estimated = whole.sum("mapscope_alloc_bytes_total", |_| true);
    let exact = whole.sum("mapscope_go_gc_heap_allocs_bytes_total", |_| true);
    println!(
        "whole run: allocated {:.0} MB, estimated {:.0} MB",
        exact / 1e6,
        estimated / 1e6
    );
    assert!(
        (estimated - exact).abs() / exact < 0.03,
        "over the whole run: estimated {estimated} against {exact} allocated"
    );
}

/// The last `{"maps":N}` progress line of gcbench's growmaps mode seen so far.
fn maps_built(mapscope: &Mapscope) -> f64 {
    let all = mapscope.stdout.all();
    let line = all
        .lines()
        .rev()
        .find(|line| line.starts_with("{\"maps\""))
        .unwrap_or_else(|| panic!("no progress from gcbench: {all}"));
    let progress: serde_json::Value = serde_json::from_str(line).unwrap();
    progress["maps"].as_f64().unwrap()
}

/// The file offsets of the map growth probes (`map_event_*`) `mapscope inspect` finds in
/// `binary`.
fn map_event_offsets(binary: &Path) -> Vec<u64> {
    let inspect = common::inspect_json(&[binary.to_str().unwrap()]);
    let offsets: Vec<u64> = inspect["probes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|probe| {
            probe["program"]
                .as_str()
                .is_some_and(|name| name.starts_with("map_event"))
        })
        .map(|probe| probe["file_offset"].as_u64().unwrap())
        .collect();
    assert!(!offsets.is_empty(), "no map growth probe in {inspect}");
    offsets
}

/// How many of mapscope's (`pid`'s) uprobe links sit at one of `offsets`: the kernel shows
/// each link's file offset in its fdinfo.
fn links_at(pid: u32, offsets: &[u64]) -> usize {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return 0;
    };
    fds.filter_map(Result::ok)
        .filter(|fd| {
            std::fs::read_link(fd.path())
                .is_ok_and(|link| link.as_os_str() == "anon_inode:bpf_link")
        })
        .filter_map(|fd| {
            std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{}", fd.file_name().to_str()?)).ok()
        })
        .filter(|info| {
            info.lines().any(|line| {
                line.strip_prefix("offset:")
                    .and_then(|hex| {
                        u64::from_str_radix(hex.trim().trim_start_matches("0x"), 16).ok()
                    })
                    .is_some_and(|offset| offsets.contains(&offset))
            })
        })
        .count()
}

/// The governor holds the map growth probes of a program that grows maps flat out (10% of its
/// CPU in the probes unheld, 3% budget), and the program's own throughput says so: measured
/// while the probes are on against while they are off, in the same run (alternating every few
/// seconds, so that this machine's drift, up to 20% between runs a minute apart, cancels), the
/// slowdown they bring times the time they are on stays within the budget, give or take what
/// the CPU estimate cannot see (after each trap the program's own code runs slower for a
/// while: the slowdown measured here came to 1.2-1.7 times the probes' CPU time; see
/// docs/METRICS.md). And the scaled
/// growth counts agree with the maps the program says it built (two counted growths each: 224
/// and 448 entries).
#[test]
#[ignore = "needs root and Go toolchains: run `cargo xtask test`"]
fn the_governor_holds_map_growth_probes_by_the_targets_own_throughput() {
    let _alone = one_at_a_time();
    const BUDGET: f64 = 0.03;
    let binary = common::build_go("gcbench", NEWEST_GO, &[]);
    let run = |budget: &str, seconds: u32, idle: u32| {
        Mapscope::start(&[
            "run",
            "--listen",
            "127.0.0.1:0",
            "--max-overhead",
            budget,
            "--",
            binary.to_str().unwrap(),
            "-mode",
            "growmaps",
            "-duration",
            &format!("{seconds}s"),
            "-then-idle",
            &format!("{idle}s"),
        ])
    };
    let done = |mapscope: &Mapscope, seconds: u64| {
        mapscope.stdout.wait_for(
            "gcbench to finish",
            Duration::from_secs(seconds + 30),
            |line| line == "done",
        );
    };

    // Unheld, every growth counted: two per map.
    let ungoverned = run("0", 15, 5);
    done(&ungoverned, 15);
    // The map collector reads the kernel's counts every second.
    std::thread::sleep(Duration::from_secs(2));
    let metrics = ungoverned.scrape();
    let growths = metrics.sum("mapscope_map_growths_total", |_| true);
    let per_map = growths / maps_built(&ungoverned);
    let unbounded = metrics.sum("mapscope_probe_overhead_ratio", |labels| {
        labels["probe"] == "map_event"
    });
    drop(ungoverned);
    assert!((per_map - 2.0).abs() < 0.01, "{per_map} growths a map");
    // Costly enough that the governor must cut it to half or less (it cost 0.099-0.128 unheld
    // here, by the machine's load).
    assert!(
        unbounded > 2.0 * BUDGET,
        "the load is not costly enough: {unbounded}"
    );

    let governed = run(&BUDGET.to_string(), 70, 5);
    let offsets = map_event_offsets(&binary);
    let mapscope_pid = governed.guard.0.id();
    std::thread::sleep(Duration::from_secs(8));
    let (before, maps_before) = (governed.scrape(), maps_built(&governed));
    // Every 20 ms for a minute: whether the map probes are all on or all off, and the maps
    // built so far (the program prints them every 100 ms).
    let mut samples = Vec::new();
    let until = std::time::Instant::now() + Duration::from_secs(60);
    while std::time::Instant::now() < until {
        let on = match links_at(mapscope_pid, &offsets) {
            0 => Some(false),
            all if all == offsets.len() => Some(true),
            _ => None,
        };
        samples.push((std::time::Instant::now(), on, maps_built(&governed)));
        std::thread::sleep(Duration::from_millis(20));
    }
    let (after, maps_after) = (governed.scrape(), maps_built(&governed));
    done(&governed, 70);
    // Maps built and seconds spent while on and while off (the moments in between, when the
    // probes are going on or off, left out).
    let (mut on, mut off) = ((0.0, 0.0), (0.0, 0.0));
    for pair in samples.windows(2) {
        let ((then, was, built_then), (now, is, built_now)) = (pair[0], pair[1]);
        let into = match (was, is) {
            (Some(true), Some(true)) => &mut on,
            (Some(false), Some(false)) => &mut off,
            _ => continue,
        };
        into.0 += built_now - built_then;
        into.1 += (now - then).as_secs_f64();
    }
    let on_fraction = on.1 / (on.1 + off.1);
    let slowdown_while_on = 1.0 - (on.0 / on.1) / (off.0 / off.1);
    let cost = on_fraction * slowdown_while_on;
    let estimated_cost = after.sum("mapscope_probe_overhead_ratio", |labels| {
        labels["probe"] == "map_event"
    });
    let estimated = after.sum("mapscope_map_growths_total", |_| true)
        - before.sum("mapscope_map_growths_total", |_| true);
    let expected = (maps_after - maps_before) * per_map;
    let duty = after.sum("mapscope_probe_duty_cycle", |labels| {
        labels["probe"] == "map_event"
    });
    println!(
        "unheld: {per_map:.3} growths a map, the probes costing {unbounded:.3}; held at {BUDGET}: \
         duty {duty:.3}, on {on_fraction:.3} of the time, {:.0} maps/s while on against {:.0} \
         off ({slowdown_while_on:.3} slower), costing {cost:.4} (estimated {estimated_cost:.4}); \
         growths in 60 s: estimated {estimated:.0}, built {expected:.0}",
        on.0 / on.1,
        off.0 / off.1,
    );
    assert!(duty < 1.0, "the map probes were not cycled");
    assert!(
        on.1 > 3.0 && off.1 > 3.0,
        "too little time on ({:.1} s) or off ({:.1} s) to compare",
        on.1,
        off.1
    );
    // The comparison sees the probes (they slowed the program while on by 0.39-1.7 times what
    // they cost it unheld in CPU time, the low end on a busy machine), so it would see a
    // governor that let them cost too much.
    assert!(
        slowdown_while_on > 0.33 * unbounded,
        "the program ran {slowdown_while_on:.3} slower while the probes were on"
    );
    // Within the budget, the after-trap slowdown, and this two-core machine's noise.
    assert!(
        cost <= 1.5 * BUDGET + 0.01,
        "the map probes cost the program {cost:.4} of its throughput, over {BUDGET}"
    );
    assert!(
        (estimated - expected).abs() / expected < 0.2,
        "estimated {estimated} growths, {expected} made"
    );
}

/// deploy/prometheus/rules.yml, loaded by a real Prometheus scraping mapscope: its alert goes
/// off for a target that costs more than the budget (`--alloc-exact`, which the budget never
/// cuts), and its recording rule has the cost. The alert waits ten minutes before firing, so
/// this sees it pending: its expression holds.
#[test]
#[ignore = "needs root and Go toolchains: run `cargo xtask test`"]
fn the_over_budget_alert_goes_off() {
    let _alone = one_at_a_time();
    let binary = common::build_go("gcbench", NEWEST_GO, &[]);
    let mapscope = Mapscope::start(&[
        "run",
        "--listen",
        "127.0.0.1:0",
        "--alloc-exact",
        "--",
        binary.to_str().unwrap(),
        "-mode",
        "alloc",
        "-duration",
        "40s",
    ]);
    let rules = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/prometheus/rules.yml");
    let prometheus = common::PrometheusServer::start(&format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\n\
         scrape_configs:\n  - job_name: mapscope\n    static_configs:\n      - targets: ['{}']\n",
        rules.display(),
        mapscope.address
    ));
    let api = |path: &str| -> serde_json::Value {
        serde_json::from_str(&common::http_get(prometheus.address, path)).unwrap()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let alert = loop {
        let alerts = api("/api/v1/alerts");
        let found = alerts["data"]["alerts"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|alert| alert["labels"]["alertname"] == "MapscopeOverBudget")
            .cloned();
        if let Some(alert) = found {
            break alert;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no MapscopeOverBudget alert within 30 s: {alerts}\nmapscope: {}",
            mapscope.stderr.all()
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    println!("{alert}");
    assert!(
        alert["labels"]["exe"]
            .as_str()
            .is_some_and(|exe| exe.starts_with("gcbench")),
        "{alert}"
    );
    assert!(
        matches!(alert["state"].as_str(), Some("pending" | "firing")),
        "{alert}"
    );
    let recorded = api("/api/v1/query?query=target%3Amapscope_overhead%3Aratio");
    let value: f64 = recorded["data"]["result"][0]["value"][1]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(value > 0.1, "recorded {recorded}");
    assert!(
        mapscope
            .stderr
            .all()
            .contains("--alloc-exact costs the target"),
        "no over-budget warning: {}",
        mapscope.stderr.all()
    );
}

/// testdata/go/nosampling's report: the runtime's /gc/heap/allocs counters and the objects
/// each of its two sites made.
fn nosampling_counters(target: &mut GoTarget) -> serde_json::Value {
    target.send("counters");
    let line = target
        .stdout
        .wait_for("the target's counters", Duration::from_secs(10), |line| {
            line.starts_with('{')
        });
    serde_json::from_str(&line).unwrap()
}

/// The objects of size bucket `le` alone (the histogram is cumulative).
fn size_bucket(metrics: &common::Metrics, le: &str, below: &str) -> f64 {
    let cumulative = |bound: &str| {
        metrics.sum("mapscope_alloc_size_bytes_bucket", |labels| {
            labels.get("le").map(String::as_str) == Some(bound)
        })
    };
    cumulative(le) - cumulative(below)
}

/// A program whose runtime samples nothing (the linker set MemProfileRate to 0, as in most
/// services) still gets allocation rates, sizes and sites under the default budget: mapscope
/// counts every allocation with probes the governor keeps on part of the time, and scales the
/// counts up. Over a window of several cycles, bytes and objects must be within 15% of the
/// runtime's own /gc/heap/allocs, each size bucket within 15% of the objects the program
/// made of that size, the byte split between its two sites right within the sampling
/// bound, and the cost it reports within the budget. The load (nosampling -paced, about 100
/// MB/s from 8,800 allocations a second, with 3 ms of computing every 10 ms) costs several
/// times the budget unheld: the test checks the duty is below 1 first.
#[test]
#[ignore = "needs root and Go toolchains: run `cargo xtask test`"]
fn a_program_that_samples_nothing_gets_counted_allocations_within_the_budget() {
    let _alone = one_at_a_time();
    let binary = common::build_go("nosampling", NEWEST_GO, &[]);
    // Busy 60% of a core: mapscope's own work for the target, fixed per second, came to 0.8%
    // of a target busy 30% of a core in the test build (unoptimized), and with the never-cut
    // probes left the counted family only the 1% floor, which that and the noise of the
    // minute's window put over the budget at times. (A release build's own work is about a
    // quarter of that; light targets are what docs/METRICS.md says of them.)
    let mut target = GoTarget::start(&binary, &["-paced", "-work", "6ms"]);
    let mut mapscope = Mapscope::attach(target.pid());
    assert!(
        mapscope
            .stderr
            .all()
            .contains("mapscope counts allocations itself"),
        "counted mode: {}",
        mapscope.stderr.all()
    );
    // The governor's first cycles: measured, then cut to what fits.
    std::thread::sleep(Duration::from_secs(10));
    let (own_before, ours_before) = (nosampling_counters(&mut target), mapscope.scrape());
    // Twelve cycles of the governor's, 8 s here unless removing the 17 probes of Go 1.27's
    // allocation entry points takes long (then longer): a window's two ends each lead or lag
    // by part of one, in opposite directions.
    std::thread::sleep(Duration::from_secs(96));
    let (own_after, ours_after) = (nosampling_counters(&mut target), mapscope.scrape());
    let own = |name: &str| {
        (own_after[name].as_u64().unwrap() - own_before[name].as_u64().unwrap()) as f64
    };
    let ours = |name: &str| ours_after.sum(name, |_| true) - ours_before.sum(name, |_| true);
    let duty = ours_after.sum("mapscope_probe_duty_cycle", |labels| {
        labels["probe"] == "alloc_count"
    });
    let cost = ours_after.sum("mapscope_overhead_ratio", |_| true);
    let off = |ours: f64, theirs: f64| (ours / theirs - 1.0).abs();
    let (bytes, objects) = (
        ours("mapscope_alloc_bytes_total"),
        ours("mapscope_alloc_objects_total"),
    );
    let (runtime_bytes, runtime_objects) = (own("bytes"), own("objects"));
    println!(
        "counted mode: duty {duty:.3}, cost {:.2}% (budget 1%)\n  bytes   mapscope {bytes:.0} \
         runtime {runtime_bytes} ({:+.1}%)\n  objects mapscope {objects:.0} runtime \
         {runtime_objects} ({:+.1}%)",
        cost * 100.0,
        (bytes / runtime_bytes - 1.0) * 100.0,
        (objects / runtime_objects - 1.0) * 100.0,
    );
    assert!(
        duty > 0.0 && duty < 0.9,
        "the load must cost more than the budget unheld, so that the governor cuts it: duty {duty}"
    );
    assert!(
        off(bytes, runtime_bytes) <= 0.15,
        "bytes {bytes} vs {runtime_bytes}"
    );
    assert!(
        off(objects, runtime_objects) <= 0.15,
        "objects {objects} vs {runtime_objects}"
    );
    // At most the budget: the meter's last minute, with the after-trap effect this paced
    // program barely shows (tests above), and 0.2 points of noise.
    assert!(
        cost <= 0.012,
        "mapscope cost the target {:.2}% of its CPU",
        cost * 100.0
    );

    // Sizes: each power-of-two bucket holds the objects of that size.
    let sizes = |le: &str, below: &str| {
        size_bucket(&ours_after, le, below) - size_bucket(&ours_before, le, below)
    };
    for (le, below, made) in [
        ("4096", "2048", own("small")),
        ("32768", "16384", own("large")),
    ] {
        let counted = sizes(le, below);
        println!("  objects of up to {le} bytes: mapscope {counted:.0}, the program {made}");
        assert!(
            off(counted, made) <= 0.15,
            "bucket {le}: {counted} vs {made}"
        );
    }

    // Sites, from byte-weighted samples: buildLarge makes three quarters of the bytes.
    let site = |function: &str| {
        let bytes = |metrics: &common::Metrics| {
            metrics.sum("mapscope_alloc_site_bytes_total", |labels| {
                labels["function"] == function
            })
        };
        bytes(&ours_after) - bytes(&ours_before)
    };
    let (large, small) = (site("main.buildLarge"), site("main.buildSmall"));
    let samples = ours("mapscope_alloc_samples_total");
    let share = large / (large + small);
    println!(
        "  sites: buildLarge {:.1}% of the bytes from {samples} samples (the program: 75%)",
        share * 100.0
    );
    assert!(
        samples >= 200.0,
        "too few samples to judge the sites: {samples}"
    );
    assert!((share - 0.75).abs() <= 0.1, "buildLarge's share {share}");

    target.send("exit");
    assert!(mapscope.wait(Duration::from_secs(60)).success());
    let summary = mapscope.stdout.all();
    assert!(
        summary.contains("counted by mapscope's probes within the budget"),
        "{summary}"
    );
}

/// The kernel memory `pid`'s BPF maps lock.
fn locked_bpf(pid: u32) -> u64 {
    mapscope::process::bpf_maps::locked_bytes(pid).unwrap()
}

/// A process's resident memory (bytes) and CPU time (seconds) so far, from /proc.
fn rss_and_cpu(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let rss_kib: f64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.split_whitespace().next()?.parse().ok())
        .unwrap();
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // The fields after the command's closing parenthesis; utime and stime are 14th and 15th.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    let hertz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (rss_kib * 1024.0, ticks / hertz)
}

/// What mapscope keeps for a target is bounded, and its work follows what changes. On a
/// program whose allocations come from thousands of distinct call stacks (gcbench -mode
/// stacks: 2^14 call paths) for a minute, the stacks kept stop growing at what the kernel's
/// table holds, and mapscope's memory and CPU stay flat after the first 20 s: fails if memory
/// grows by more than 10% (and 4 MiB) from 20 s to 60 s into that minute, or CPU per second by
/// more than half (and half a percent of a core) from one 20 s to the next. Before and after
/// that minute the program allocates as fast down one call path: afterwards, with thousands of
/// stacks seen, mapscope must cost what it did before (within half, and half a percent of a
/// core); reading everything seen so far every second, it cost ten times as much. Without a
/// budget: the governor would take the sampler off part of the time, and mapscope reads
/// nothing while it is off, so its CPU would follow the cycles.
#[test]
#[ignore = "needs root and Go toolchains: run `cargo xtask test`"]
fn memory_and_cpu_stay_flat_while_distinct_stacks_accumulate() {
    let _alone = one_at_a_time();
    let binary = common::build_go("gcbench", NEWEST_GO, &[]);
    let mapscope = Mapscope::start(&[
        "run",
        "--listen",
        "127.0.0.1:0",
        "--max-overhead",
        "0",
        "--",
        binary.to_str().unwrap(),
        "-mode",
        "stacks",
        "-workers",
        "1",
        "-one-path-around",
        "25s",
        "-duration",
        "60s",
    ]);
    let pid = mapscope.guard.0.id();
    let stacks = |metrics: &common::Metrics| metrics.sum("mapscope_alloc_stacks", |_| true);
    let cpu_share = |from: f64, to: f64, seconds: u64| (to - from) / seconds as f64;
    // One path from about 0 to 25 s (the program starts a little after mapscope), many to 85 s,
    // one path to 110 s.
    std::thread::sleep(Duration::from_secs(5));
    let (_, cpu_5) = rss_and_cpu(pid);
    let (stacks_5, bpf_5) = (stacks(&mapscope.scrape()), locked_bpf(pid));
    std::thread::sleep(Duration::from_secs(18));
    let (_, cpu_23) = rss_and_cpu(pid);
    std::thread::sleep(Duration::from_secs(22));
    let (rss_45, cpu_45) = rss_and_cpu(pid);
    let stacks_45 = stacks(&mapscope.scrape());
    std::thread::sleep(Duration::from_secs(20));
    let (rss_65, cpu_65) = rss_and_cpu(pid);
    std::thread::sleep(Duration::from_secs(19));
    let (rss_84, cpu_84) = rss_and_cpu(pid);
    let stacks_84 = stacks(&mapscope.scrape());
    let bpf_84 = locked_bpf(pid);
    std::thread::sleep(Duration::from_secs(6));
    let (_, cpu_90) = rss_and_cpu(pid);
    std::thread::sleep(Duration::from_secs(18));
    let (_, cpu_108) = rss_and_cpu(pid);
    let before = cpu_share(cpu_5, cpu_23, 18);
    let (early, late) = (cpu_share(cpu_45, cpu_65, 20), cpu_share(cpu_65, cpu_84, 19));
    let after = cpu_share(cpu_90, cpu_108, 18);
    let mib = |bytes: f64| bytes / f64::from(1 << 20);
    println!(
        "distinct stacks {stacks_45} after 20 s, {stacks_84} after 60 s; RSS {:.1} MiB, \
         {:.1} MiB, {:.1} MiB; CPU {:.2}% then {:.2}% of a core; down one path {:.2}% before, \
         {:.2}% after; BPF maps {:.2} MiB with {stacks_5} stacks, {:.2} MiB with {stacks_84}",
        mib(rss_45),
        mib(rss_65),
        mib(rss_84),
        early * 100.0,
        late * 100.0,
        before * 100.0,
        after * 100.0,
        mib(bpf_5 as f64),
        mib(bpf_84 as f64),
    );
    assert!(
        stacks_45 >= 1000.0,
        "the load must bring thousands of distinct stacks: {stacks_45}"
    );
    // The kernel's table, and the one "stack not taken" every full table leads to.
    assert!(
        stacks_84 <= f64::from(profiler_common::alloc::MAX_ALLOC_STACKS + 1),
        "more stacks kept than the kernel holds: {stacks_84}"
    );
    if common::kernel_allocates_on_demand() {
        // The kernel memory follows the stacks kept (528 bytes of frames each, and the hash
        // table's own), instead of 2 MiB of stack table preallocated from the start.
        assert!(
            bpf_5 < 2 << 20,
            "a target with {stacks_5} stacks locked {:.2} MiB of BPF maps",
            mib(bpf_5 as f64)
        );
        let per_stack = (bpf_84 - bpf_5) as f64 / (stacks_84 - stacks_5);
        assert!(
            (528.0..1024.0).contains(&per_stack),
            "{per_stack:.0} bytes of BPF maps per stack kept"
        );
    }
    assert!(
        rss_84 <= rss_45 * 1.1 + 4.0 * f64::from(1 << 20),
        "mapscope's memory grew from {:.1} MiB to {:.1} MiB",
        mib(rss_45),
        mib(rss_84)
    );
    assert!(
        late <= early * 1.5 + 0.005,
        "mapscope's CPU grew from {:.2}% to {:.2}% of a core",
        early * 100.0,
        late * 100.0
    );
    assert!(
        after <= before * 1.5 + 0.005,
        "allocations down one call path cost mapscope {:.2}% of a core before it saw thousands \
         of stacks and {:.2}% after: its work follows what it has seen, not what changed",
        before * 100.0,
        after * 100.0
    );
}

/// The governor takes a family's probes off and puts them back every cycle: the daemon holds
/// no more of them after many cycles than while attached all the time, and when a target exits
/// mid-cycle (once while its map probes are off, once right as they go back), every probe it
/// had is gone, and the daemon goes on.
#[test]
#[ignore = "needs root and Go toolchains: run `cargo xtask test`"]
fn the_governor_leaves_no_probe_behind_when_cycling_or_when_its_target_exits_mid_cycle() {
    let _alone = one_at_a_time();
    let binary = common::renamed("gcbench", NEWEST_GO, "gov-exit");
    let daemon = Mapscope::daemon_selecting(&binary, &["--max-overhead", "0.05"]);
    let daemon_pid = daemon.guard.0.id();
    // The daemon's own: the exec watch's link, attached soon after it listens (aya's feature
    // probes open and close a link or two before it, so the count must hold first).
    let baseline = common::settled_probe_handles(daemon_pid);
    assert!(baseline > 0, "the daemon holds no exec watch");
    for exit_while_going_back in [false, true] {
        let mut target = Command::new(&binary)
            .args(["-mode", "growmaps", "-duration", "120s"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let pid = target.id().to_string();
        // The map probes' duty series is there (a target just found has none yet) and below 1.
        let map_duty = |metrics: &common::Metrics| {
            metrics
                .0
                .iter()
                .find(|sample| {
                    sample.name == "mapscope_probe_duty_cycle"
                        && sample.labels["probe"] == "map_event"
                        && sample.labels.get("pid") == Some(&pid)
                })
                .map(|sample| sample.value)
        };
        let attached = common::wait_until(
            &daemon,
            "the target's map probes cycling",
            Duration::from_secs(60),
            |metrics| {
                has_target(metrics, target.id()) && map_duty(metrics).is_some_and(|duty| duty < 1.0)
            },
        );
        assert!(has_target(&attached, target.id()));
        // Three cycles (8 s each at most): the handles go down while the probes are off and
        // back up, in the later cycles to what the earlier ones held.
        let mut counts = Vec::new();
        let until = std::time::Instant::now() + Duration::from_secs(25);
        while std::time::Instant::now() < until {
            counts.push(common::probe_handles(daemon_pid));
            std::thread::sleep(Duration::from_millis(50));
        }
        let (low, high) = (*counts.iter().min().unwrap(), *counts.iter().max().unwrap());
        let highs = counts
            .windows(2)
            .filter(|pair| pair[0] < high && pair[1] == high)
            .count();
        assert!(
            low < high && highs >= 2,
            "the probes did not come off and go back: {counts:?}"
        );
        // A cycle that left a probe behind would hold more in the later ones.
        let (early, late) = counts.split_at(counts.len() / 2);
        assert_eq!(
            early.iter().max(),
            late.iter().max(),
            "more probes in later cycles: {counts:?}"
        );
        // Exit mid-cycle: while the map probes are off, or as soon as they start going back.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let mut last = common::probe_handles(daemon_pid);
        loop {
            let now = common::probe_handles(daemon_pid);
            if (!exit_while_going_back && now == low) || (exit_while_going_back && now > last) {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no moment to exit at: {now}"
            );
            last = now;
            std::thread::sleep(Duration::from_millis(5));
        }
        target.kill().unwrap();
        target.wait().unwrap();
        // Removing them takes the kernel a tenth of a second or more apiece: a pause between
        // two on a loaded machine is no end.
        let left = common::settled_probe_handles_at(daemon_pid, baseline, Duration::from_secs(20));
        assert_eq!(
            left,
            baseline,
            "{left} probe handles left after the target exited (the daemon's own: \
             {baseline}); daemon log:\n{}",
            daemon.stderr.all()
        );
        println!(
            "exit while {}: handles {low}..{high} while cycling, {baseline} after",
            if exit_while_going_back {
                "going back"
            } else {
                "off"
            }
        );
    }
    common::wait_until(
        &daemon,
        "the daemon to count no target",
        Duration::from_secs(10),
        |metrics| metrics.sum("mapscope_targets", |_| true) == 0.0,
    );
    let log = daemon.stderr.all();
    assert!(!log.contains("ERROR") && !log.contains("panicked"), "{log}");
}

/// The daemon holds exactly one target, and it is `pid`.
fn has_target(metrics: &common::Metrics, pid: u32) -> bool {
    metrics.sum("mapscope_targets", |_| true) == 1.0 && common::has_pid(metrics, pid)
}
