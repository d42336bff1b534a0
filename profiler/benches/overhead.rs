//! `cargo xtask bench`: mapscope's cost to the target, as ratios measured in the same run.
//!
//! 1. Slowdown: a GC-heavy Go program's allocation throughput with mapscope attached from the
//!    start (`mapscope run`) against the same program alone, in interleaved rounds. The program
//!    links runtime.MemProfile, so the runtime samples allocations and mapscope's allocation probe
//!    fires as it would on a service that imports pprof.
//! 2. Per-hit cost: a Go function shaped like `runtime.startTheWorldWithSema` called in a tight
//!    loop, with no probe, with an empty uprobe at its entry and RET, and with mapscope's own
//!    programs there (events drained by mapscope's collector, as in production).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "benchmark driver: a failure aborts the run"
)]

use std::{
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::Arc,
};

use mapscope::{
    collect::stw::StwCollector,
    export::metrics::Metrics,
    gobin::{
        GoBinary,
        abi::{self, Support},
    },
    probes::{
        loaded::AttachedProbes,
        stw::{CALIBRATION_NOOP, ProbePoint, START_ENTRY, START_RETURN},
    },
};
use profiler_common::stw::{StwCookie, StwLayout};

const ROUNDS: usize = 7;
const EXACT_ROUNDS: usize = 3;
const ALLOC_SECONDS: &str = "2s";
const CALLS: usize = 200_000;
const CALL_ROUNDS: usize = 3;
const SITE: &str = "main.stwProbeSite";

fn main() {
    let go =
        std::env::var("MAPSCOPE_BENCH_GO").expect("MAPSCOPE_BENCH_GO: run `cargo xtask bench`");
    let gcbench = build_gcbench(Path::new(&go));
    let mapscope = env!("CARGO_BIN_EXE_mapscope");

    println!(
        "== target slowdown: {ROUNDS} interleaved rounds of {ALLOC_SECONDS}, allocation throughput"
    );
    let mut ratios = Vec::new();
    let (mut pause_alone, mut pause_attached) = (Vec::new(), Vec::new());
    let mut cycles = 0.0;
    let mut bytes_per_second = Vec::new();
    for round in 1..=ROUNDS {
        let alone =
            alloc_run(Command::new(&gcbench).args(["-mode", "alloc", "-duration", ALLOC_SECONDS]));
        let attached = alloc_run(
            Command::new(mapscope)
                .args(["run", "--listen", "127.0.0.1:0", "--"])
                .arg(&gcbench)
                .args(["-mode", "alloc", "-duration", ALLOC_SECONDS]),
        );
        let ratio = attached.ops_per_second / alone.ops_per_second;
        cycles += attached.cycles_per_second;
        println!(
            "  round {round}: alone {:.2} Mops/s, attached {:.2} Mops/s ({:.0} GC cycles/s), ratio {ratio:.4}",
            alone.ops_per_second / 1e6,
            attached.ops_per_second / 1e6,
            attached.cycles_per_second
        );
        ratios.push(ratio);
        bytes_per_second.push(alone.bytes_per_second);
        pause_alone.push(alone.mean_gc_pause_us);
        pause_attached.push(attached.mean_gc_pause_us);
    }
    let (lowest, highest) = (
        ratios.iter().copied().fold(f64::INFINITY, f64::min),
        ratios.iter().copied().fold(0.0, f64::max),
    );
    let ratio = median(&mut ratios);
    println!(
        "  median throughput ratio attached/alone: {ratio:.4} (slowdown {:+.2}%; rounds ranged {lowest:.3}..{highest:.3}), at {:.0} GC cycles/s",
        (1.0 - ratio) * 100.0,
        cycles / ROUNDS as f64
    );
    let rate = median(&mut bytes_per_second);
    // The runtime samples one allocation per 512 KiB on average; each costs a probe hit.
    let samples_per_second = rate / (512.0 * 1024.0);
    println!(
        "  allocation rate {:.2} GB/s: about {samples_per_second:.0} sampled allocations (probe hits) per second; \
         slowdown per GB/s allocated: {:+.2}%",
        rate / 1e9,
        (1.0 - ratio) * 100.0 / (rate / 1e9)
    );
    let (alone, attached) = (median(&mut pause_alone), median(&mut pause_attached));
    println!(
        "  median mean GC pause (MemStats.PauseTotalNs / NumGC / 2): alone {alone:.1} µs, attached {attached:.1} µs ({:+.1} µs per pause from probe hits inside the stopped world)",
        attached - alone
    );

    println!(
        "== exact allocation mode (--alloc-exact): {EXACT_ROUNDS} interleaved rounds of {ALLOC_SECONDS}"
    );
    let mut exact_ratios = Vec::new();
    for _ in 0..EXACT_ROUNDS {
        let alone =
            alloc_run(Command::new(&gcbench).args(["-mode", "alloc", "-duration", ALLOC_SECONDS]));
        let exact = alloc_run(
            Command::new(mapscope)
                .args(["run", "--listen", "127.0.0.1:0", "--alloc-exact", "--"])
                .arg(&gcbench)
                .args(["-mode", "alloc", "-duration", ALLOC_SECONDS]),
        );
        exact_ratios.push(exact.ops_per_second / alone.ops_per_second);
    }
    let exact = median(&mut exact_ratios);
    println!(
        "  median throughput ratio exact/alone: {exact:.4} (the target runs {:.0}x slower: a uprobe on every allocation)",
        1.0 / exact
    );

    println!("== per-hit cost: {CALLS} calls of {SITE}, 2 uprobe hits per call (entry + RET)");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (mut none, mut noop, mut ours) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..CALL_ROUNDS {
        none.push(runtime.block_on(call_run(&gcbench, None)));
        noop.push(runtime.block_on(call_run(
            &gcbench,
            Some((CALIBRATION_NOOP, CALIBRATION_NOOP)),
        )));
        ours.push(runtime.block_on(call_run(&gcbench, Some((START_ENTRY, START_RETURN)))));
    }
    let (none, noop, ours) = (median(&mut none), median(&mut noop), median(&mut ours));
    let noop_hit = (noop - none) / 2.0;
    let our_hit = (ours - none) / 2.0;
    println!("  no probe:           {none:8.1} ns/call");
    println!("  empty uprobes:      {noop:8.1} ns/call  -> {noop_hit:7.1} ns per hit");
    println!("  mapscope programs:  {ours:8.1} ns/call  -> {our_hit:7.1} ns per hit");
    println!(
        "  mapscope per-hit cost / empty uprobe: {:.3} ({:+.1} ns of mapscope work per hit)",
        our_hit / noop_hit,
        our_hit - noop_hit
    );
}

fn build_gcbench(go: &Path) -> PathBuf {
    let output = Path::new(env!("CARGO_TARGET_TMPDIR")).join("gcbench");
    let mut command = Command::new(go);
    command
        .args(["build", "-o"])
        .arg(&output)
        .arg(".")
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/go/gcbench"))
        .env("GOTOOLCHAIN", "local")
        .env("GOPROXY", "off");
    if let Some(cache) = std::env::var_os("MAPSCOPE_TEST_GOCACHE") {
        command.env("GOCACHE", cache);
    }
    assert!(command.status().unwrap().success(), "building gcbench");
    output
}

struct AllocRun {
    ops_per_second: f64,
    bytes_per_second: f64,
    cycles_per_second: f64,
    /// The runtime's own mean per pause (two pauses per cycle).
    mean_gc_pause_us: f64,
}

/// One gcbench allocation run, from its JSON line.
fn alloc_run(command: &mut Command) -> AllocRun {
    let output = command.stderr(Stdio::null()).output().unwrap();
    assert!(output.status.success(), "{command:?} failed");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout
        .lines()
        .find(|line| line.starts_with('{'))
        .expect("gcbench's result line");
    let result: serde_json::Value = serde_json::from_str(line).unwrap();
    let seconds = result["seconds"].as_f64().unwrap();
    let cycles = result["gc_cycles"].as_f64().unwrap();
    AllocRun {
        ops_per_second: result["ops"].as_f64().unwrap() / seconds,
        bytes_per_second: result["alloc_bytes"].as_f64().unwrap() / seconds,
        cycles_per_second: cycles / seconds,
        mean_gc_pause_us: result["pause_total_ns"].as_f64().unwrap() / cycles.max(1.0) / 2.0 / 1e3,
    }
}

/// ns per call of the probed site, with `programs` (entry, return) attached, or none.
async fn call_run(gcbench: &Path, programs: Option<(&'static str, &'static str)>) -> f64 {
    let mut child = Command::new(gcbench)
        .args(["-mode", "call", "-calls", &CALLS.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    assert_eq!(stdout.next().unwrap().unwrap(), "ready");

    let mut attached = None;
    if let Some((entry, ret)) = programs {
        let binary = GoBinary::open(gcbench, &[SITE]).unwrap();
        let site = binary.function(SITE).unwrap();
        let point = |program, address| ProbePoint {
            program,
            function: SITE,
            address,
            file_offset: binary.file_offset(address).unwrap(),
            cookie: StwCookie {
                layout: StwLayout::Go123,
                g_m_offset: 0,
                m_preemptoff_offset: 0,
            }
            .encode(),
        };
        let mut points = vec![point(entry, site.address)];
        points.extend(
            binary
                .ret_sites(site)
                .into_iter()
                .map(|address| point(ret, address)),
        );
        let mut probes = AttachedProbes::attach(child.id(), gcbench, &points).unwrap();
        // Drain events exactly as a profiling session does.
        let collector = if entry == START_ENTRY {
            let Support::Known(abi) = abi::stw_abi("go1.27.3".parse().unwrap()) else {
                unreachable!("1.27 is in the table")
            };
            let metrics = Arc::new(Metrics::new().unwrap());
            let target = Arc::new(metrics.target(child.id(), "gcbench", "go1.27.3"));
            let mut collector =
                StwCollector::new(probes.take_stw_maps().unwrap(), abi, target).unwrap();
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let task = tokio::spawn(async move {
                collector
                    .run_until(async {
                        let _ = stopped.await;
                    })
                    .await;
                collector.book.pauses()
            });
            Some((stop, task))
        } else {
            None
        };
        attached = Some((probes, collector));
    }

    writeln!(child.stdin.as_mut().unwrap(), "go").unwrap();
    let line = tokio::task::spawn_blocking(move || stdout.next().unwrap().unwrap())
        .await
        .unwrap();
    let result: serde_json::Value = serde_json::from_str(&line).unwrap();
    if let Some((probes, collector)) = attached {
        if let Some((stop, task)) = collector {
            let _ = stop.send(());
            let events = task.await.unwrap();
            // A goroutine preempted between this site's entry and RET may resume on another
            // thread, so a handful of calls pair up as "unmatched" here. (startTheWorldWithSema
            // runs on the system stack with the world stopped and cannot move.)
            println!("  mapscope programs: {events} of {CALLS} calls arrived as events");
        }
        probes.detach();
    }
    let _ = child.kill();
    let _ = child.wait();
    result["ns_per_call"].as_f64().unwrap()
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}
