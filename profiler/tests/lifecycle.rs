//! Attaching and detaching leave the target as it was; target exit and `run` behave as
//! documented.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a failure here is a test failure"
)]

mod common;

use std::{
    fs::File,
    os::unix::fs::FileExt as _,
    time::{Duration, Instant},
};

use common::{GoTarget, Mapscope};
use mapscope::gobin::{GoBinary, abi};

const GO: &str = "1.27.3";
const INT3: u8 = 0xcc;

/// The first byte of each probed instruction as the target process sees it right now.
fn probed_bytes(pid: u32, addresses: &[u64]) -> Vec<u8> {
    let memory = File::open(format!("/proc/{pid}/mem")).expect("opening the target's memory");
    addresses
        .iter()
        .map(|&address| {
            let mut byte = [0u8];
            memory
                .read_exact_at(&mut byte, address)
                .expect("reading target text");
            byte[0]
        })
        .collect()
}

/// The kernel places a uprobe by writing a breakpoint (int3) over the probed instruction in
/// the target's memory and restores the original byte on detach, so the target's text shows
/// directly whether any probe is left.
#[test]
#[ignore = "needs root and Go toolchains: run `cargo xtask test`"]
fn sigterm_removes_every_probe() {
    signal_removes_every_probe(libc::SIGTERM);
}

/// SIGHUP (the terminal closed, a service manager's reload) stops as cleanly as SIGTERM, with
/// the summary; before, it killed mapscope without one.
#[test]
#[ignore = "needs root and Go toolchains: run `cargo xtask test`"]
fn sighup_removes_every_probe() {
    signal_removes_every_probe(libc::SIGHUP);
}

fn signal_removes_every_probe(signal: libc::c_int) {
    let binary_path = common::build_go("gcload", GO, &[]);
    let binary = GoBinary::open(&binary_path, &[abi::START_THE_WORLD]).unwrap();
    let start = binary.function(abi::START_THE_WORLD).unwrap();
    // The default Go build on linux/amd64 is not PIE: virtual addresses are the addresses.
    // The pause probes: at the RETs (by default nothing at the entry, inside the pause).
    let sites = binary.ret_sites(start);
    assert!(!sites.is_empty());
    let original: Vec<u8> = sites
        .iter()
        .map(|&address| binary.code(start).unwrap()[(address - start.address) as usize])
        .collect();
    assert!(original.iter().all(|&byte| byte != INT3));

    let mut target = GoTarget::start(&binary_path, &["-duration", "500ms"]);
    assert_eq!(
        probed_bytes(target.pid(), &sites),
        original,
        "before attaching"
    );

    let mut mapscope = Mapscope::attach(target.pid());
    assert!(
        probed_bytes(target.pid(), &sites)
            .iter()
            .all(|&byte| byte == INT3),
        "while attached: every site holds a breakpoint"
    );

    mapscope.signal(signal);
    assert!(mapscope.wait(Duration::from_secs(10)).success());
    assert_eq!(
        probed_bytes(target.pid(), &sites),
        original,
        "after signal {signal}: original instructions back"
    );
    let summary = mapscope.stdout.all();
    assert!(
        summary.contains("stop-the-world pauses"),
        "no summary: {summary}"
    );

    // And the target carries on normally.
    let report = target.run_load();
    assert!(report.num_gc > 0);
}

/// Even a mapscope killed outright leaves nothing behind: the kernel drops a uprobe when the
/// last file descriptor of its perf event closes, and a dead process closes them all. Not
/// always before it is reaped: a file the exit path closes last can be released by a kernel
/// worker (`delayed_fput`), and uprobe removals wait their turn machine-wide. A loaded gate
/// run, with this file's other tests detaching at the same time, once found the breakpoint
/// still there right after the reap. So the original byte is awaited, for up to 10 s.
#[test]
#[ignore = "needs root and Go toolchains: run `cargo xtask test`"]
fn sigkill_leaves_no_probe_either() {
    let binary_path = common::build_go("gcload", GO, &[]);
    let binary = GoBinary::open(&binary_path, &[abi::START_THE_WORLD]).unwrap();
    let start = binary.function(abi::START_THE_WORLD).unwrap();
    let ret = binary.ret_sites(start)[0];
    let target = GoTarget::start(&binary_path, &[]);
    let mut mapscope = Mapscope::attach(target.pid());
    assert_eq!(probed_bytes(target.pid(), &[ret]), [INT3]);
    mapscope.signal(libc::SIGKILL);
    mapscope.wait(Duration::from_secs(5));
    let original = binary.code(start).unwrap()[(ret - start.address) as usize];
    let deadline = Instant::now() + Duration::from_secs(10);
    while probed_bytes(target.pid(), &[ret]) != [original] && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(probed_bytes(target.pid(), &[ret]), [original]);
}

#[test]
#[ignore = "needs root and Go toolchains: run `cargo xtask test`"]
fn notices_target_exit_within_a_second() {
    let mut target = GoTarget::start(
        &common::build_go("gcload", GO, &[]),
        &["-duration", "300ms"],
    );
    let mut mapscope = Mapscope::attach(target.pid());
    let report = target.run_load();
    target.send("exit");
    let _ = target.guard.0.wait();
    let exited = Instant::now();
    // Noticed: said in the log. Removing the probes comes after, 0.1 s each, and the kernel
    // removes uprobes one at a time for the whole machine (other tests' included), so the time
    // to mapscope's own exit is bounded more loosely.
    let pid = target.pid();
    mapscope
        .stderr
        .wait_for("the exit noticed", Duration::from_secs(5), |line| {
            line.contains(&format!("PID {pid} exited"))
        });
    let noticed = exited.elapsed();
    let status = mapscope.wait(Duration::from_secs(30));
    assert!(
        status.success(),
        "{status}; stderr:\n{}",
        mapscope.stderr.all()
    );
    assert!(
        noticed <= Duration::from_secs(1),
        "mapscope took {noticed:?} to notice the exit"
    );
    let summary = mapscope.stdout.all();
    assert!(
        summary.contains(&format!("{} GC cycles completed", report.num_gc)),
        "{summary}"
    );
}

/// `mapscope run` attaches before any Go code runs: it sees the GC cycle gcload forces during
/// start-up, before it prints "ready", which an attach after start would miss. It passes stdin
/// on, and exits with the command's status. `launch` is what comes before the Go binary's
/// arguments: the binary itself, or a wrapper that execs it.
fn run_counts_from_the_first_instruction(launch: &[&str]) {
    let mut args = vec!["run", "--listen", "127.0.0.1:0", "--"];
    args.extend(launch);
    args.extend(["-duration", "300ms", "-exit-code", "7"]);
    let mut mapscope = Mapscope::start(&args);
    mapscope
        .stdout
        .wait_for("the command's \"ready\"", Duration::from_secs(30), |line| {
            line == "ready"
        });
    let metrics = mapscope.scrape_until(Duration::from_secs(5), |m| m.gc_cycles() >= 1);
    assert_eq!(
        metrics.gc_cycles(),
        1,
        "{launch:?}: the start-up runtime.GC(), and nothing else yet"
    );

    mapscope.send("go");
    let line = mapscope
        .stdout
        .wait_for("the report", Duration::from_secs(60), |line| {
            line.starts_with('{')
        });
    let report: common::Report = serde_json::from_str(&line).unwrap();
    let metrics = mapscope.scrape_until(Duration::from_secs(10), |m| m.gc_cycles() > report.num_gc);
    assert_eq!(metrics.gc_cycles(), report.num_gc + 1, "{launch:?}");

    mapscope.send("exit");
    let status = mapscope.wait(Duration::from_secs(10));
    assert_eq!(
        status.code(),
        Some(7),
        "{launch:?}: mapscope run passes the command's exit status on"
    );
    assert!(mapscope.stdout.all().contains("GC cycles completed"));
}

#[test]
#[ignore = "needs root and Go toolchains: run `cargo xtask test`"]
fn run_attaches_before_go_code_and_passes_exit_status() {
    let binary = common::build_go("gcload", GO, &[]);
    run_counts_from_the_first_instruction(&[binary.to_str().unwrap()]);
}

/// Through wrappers that exec the Go program, as `env`, start scripts and version-manager
/// shims do: mapscope follows the execs and still attaches before the first Go instruction,
/// where before it refused the wrapper as "not a Go program".
#[test]
#[ignore = "needs root and Go toolchains: run `cargo xtask test`"]
fn run_follows_env_and_a_start_script_to_the_go_program() {
    let binary = common::build_go("gcload", GO, &[]);
    let binary = binary.to_str().unwrap();
    run_counts_from_the_first_instruction(&["env", "GOGC=100", binary]);
    let script = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("start-{}.sh", std::process::id()));
    std::fs::write(
        &script,
        format!("#!/bin/sh\n# a start script: set up, then become the service\nexport GOMAXPROCS=2\nexec {binary} \"$@\"\n"),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    run_counts_from_the_first_instruction(&[script.to_str().unwrap()]);
}

/// SIGTERM to `mapscope run` goes on to the command; mapscope reports and exits with its
/// status once the command has exited.
#[test]
#[ignore = "needs root and Go toolchains: run `cargo xtask test`"]
fn run_forwards_sigterm() {
    let binary = common::build_go("gcload", GO, &[]);
    let mut mapscope = Mapscope::start(&[
        "run",
        "--listen",
        "127.0.0.1:0",
        "--",
        binary.to_str().unwrap(),
    ]);
    mapscope
        .stdout
        .wait_for("the command's \"ready\"", Duration::from_secs(30), |line| {
            line == "ready"
        });
    mapscope.signal(libc::SIGTERM);
    let status = mapscope.wait(Duration::from_secs(10));
    // gcload does not handle SIGTERM, so it dies of it: 128 + 15.
    assert_eq!(
        status.code(),
        Some(143),
        "stderr:\n{}",
        mapscope.stderr.all()
    );
    assert!(mapscope.stdout.all().contains("GC cycles completed"));
}

/// `attach` to a target that re-execs its own program: the probes belonged to the old image,
/// so mapscope says so and detaches, with the summary, instead of going on with frozen counts.
#[test]
#[ignore = "needs root and Go toolchains: run `cargo xtask test`"]
fn an_exec_is_said_and_detached_from() {
    let mut target = GoTarget::start(&common::build_go("gcload", GO, &[]), &[]);
    let mut mapscope = Mapscope::attach(target.pid());
    target.send("exec");
    target
        .stdout
        .wait_for("the new image ready", Duration::from_secs(30), |line| {
            line == "ready"
        });
    let status = mapscope.wait(Duration::from_secs(20));
    let stderr = mapscope.stderr.all();
    assert!(status.success(), "{status}: {stderr}");
    assert!(stderr.contains("exec'd a new program image"), "{stderr}");
    assert!(
        mapscope.stdout.all().contains("stop-the-world pauses"),
        "no summary"
    );
}
