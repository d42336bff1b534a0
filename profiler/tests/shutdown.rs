//! Stopping a daemon that holds as many targets as it takes by default: within the time the
//! deploy files give it, every probe out of every target. A test binary of its own: removing
//! uprobes is serial for the whole machine (the kernel's `event_mutex`), so the 35 s this takes
//! would stall every other test's detach if it ran beside them.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a failure here is a test failure"
)]

mod common;

use std::{
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use common::{GoTarget, MAPSCOPE, Mapscope, renamed, wait_until};

/// How many bytes of `pid`'s executable code differ in memory from the file: a uprobe is an
/// int3 the kernel writes into the process's copy of the page, and takes out on detach.
fn probed_bytes(pid: u32) -> usize {
    use std::{io::Read as _, os::unix::fs::FileExt as _};
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
    let file = std::fs::File::open(format!("/proc/{pid}/exe")).unwrap();
    let mem = std::fs::File::open(format!("/proc/{pid}/mem")).unwrap();
    let mut maps = String::new();
    std::fs::File::open(format!("/proc/{pid}/maps"))
        .unwrap()
        .read_to_string(&mut maps)
        .unwrap();
    let mut differing = 0;
    for line in maps.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 6 || !fields[1].contains('x') || Path::new(fields[5]) != exe {
            continue;
        }
        let (start, end) = fields[0].split_once('-').unwrap();
        let start = u64::from_str_radix(start, 16).unwrap();
        let end = u64::from_str_radix(end, 16).unwrap();
        let offset = u64::from_str_radix(fields[2], 16).unwrap();
        let length = usize::try_from(end - start).unwrap();
        let (mut in_memory, mut on_disk) = (vec![0; length], vec![0; length]);
        mem.read_exact_at(&mut in_memory, start).unwrap();
        // The last page of the mapping may run past the end of the file.
        let read = file.read_at(&mut on_disk, offset).unwrap();
        differing += in_memory[..read]
            .iter()
            .zip(&on_disk[..read])
            .filter(|(a, b)| a != b)
            .count();
    }
    differing
}

/// The cap the daemon runs with unless told otherwise (`--max-targets`), read from its help.
fn default_max_targets() -> usize {
    let help = Command::new(MAPSCOPE)
        .args(["daemon", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout).into_owned();
    let after = help
        .split("--max-targets")
        .nth(1)
        .and_then(|rest| rest.split("[default: ").nth(1))
        .unwrap_or_else(|| panic!("no default for --max-targets in:\n{help}"));
    after[..after.find(']').unwrap()].parse().unwrap()
}

/// The shortest time the shipped deploy files give mapscope to stop before they kill it.
fn shipped_stop_timeout() -> Duration {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let seconds = |file: &str, key: &str| -> u64 {
        let text = std::fs::read_to_string(root.join(file)).unwrap();
        text.lines()
            .find_map(|line| line.trim().strip_prefix(key))
            .and_then(|value| {
                value
                    .trim_start_matches([':', '=', ' '])
                    .trim()
                    .parse()
                    .ok()
            })
            .unwrap_or_else(|| panic!("no {key} in {file}"))
    };
    Duration::from_secs(
        seconds(
            "deploy/kubernetes/daemonset.yaml",
            "terminationGracePeriodSeconds",
        )
        .min(seconds("deploy/systemd/mapscope.service", "TimeoutStopSec")),
    )
}

/// A daemon holding as many targets as it takes by default stops on SIGTERM, every probe
/// removed from every target, within the time the DaemonSet and the systemd unit give it.
/// The kernel removes uprobes one at a time for the whole machine (a grace period each), so
/// this is the figure the deploy files' stop timeouts are sized by.
#[test]
#[ignore = "needs root and Go toolchains: run `cargo xtask test`"]
fn shutdown_at_the_target_cap_fits_the_stop_timeout() {
    let cap = default_max_targets();
    let timeout = shipped_stop_timeout();
    let gcload = renamed("gcload", common::NEWEST_GO, "dmn-full");
    let targets: Vec<GoTarget> = (0..cap).map(|_| GoTarget::start(&gcload, &[])).collect();
    let mut daemon = Mapscope::daemon_selecting(&gcload, &[]);
    wait_until(
        &daemon,
        "every target attached",
        Duration::from_secs(120),
        |metrics| metrics.sum("mapscope_targets", |_| true) == cap as f64,
    );
    let probed: Vec<usize> = targets.iter().map(|t| probed_bytes(t.pid())).collect();
    assert!(
        probed.iter().all(|&bytes| bytes > 0),
        "every target carries probes while attached: {probed:?}"
    );

    let started = Instant::now();
    daemon.signal(libc::SIGTERM);
    let status = daemon.wait(timeout * 2);
    let took = started.elapsed();
    println!(
        "{cap} targets: stopped in {:.1} s (stop timeout {} s)",
        took.as_secs_f64(),
        timeout.as_secs()
    );
    assert!(status.success(), "{status}: {}", daemon.stderr.all());
    assert!(
        took < timeout,
        "stopping {cap} targets took {took:?}, past the deploy files' {timeout:?}"
    );
    let left: Vec<(u32, usize)> = targets
        .iter()
        .map(|target| (target.pid(), probed_bytes(target.pid())))
        .filter(|(_, bytes)| *bytes > 0)
        .collect();
    assert!(left.is_empty(), "probes left behind (PID, bytes): {left:?}");
}
