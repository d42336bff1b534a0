//! A real third-party Go program as a distribution ships it: Debian's prometheus (stripped,
//! cgo, Go 1.19), unpacked from its package by `cargo xtask test`. mapscope must find its
//! probes in the pclntab and count exactly the GC cycles prometheus reports about itself.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a failure here is a test failure"
)]

mod common;

use std::time::{Duration, Instant};

use common::Mapscope;

/// prometheus's own GC count: client_golang's `go_gc_duration_seconds` summary is fed from
/// `runtime.ReadMemStats`, so its count is `MemStats.NumGC`.
fn own_gc_count(address: std::net::SocketAddr) -> u64 {
    let text = common::http_get(address, "/metrics");
    let samples = common::parse_prometheus(&text);
    samples
        .iter()
        .find(|sample| sample.name == "go_gc_duration_seconds_count")
        .map(|sample| sample.value as u64)
        .expect("prometheus exports go_gc_duration_seconds")
}

#[test]
#[ignore = "needs root and Go toolchains: run `cargo xtask test`"]
fn debian_prometheus() {
    let binary = common::debian_prometheus();
    let report = common::inspect_json(&[binary.to_str().unwrap()]);
    assert_eq!(report["go_version"], "go1.19.8");
    assert_eq!(report["stripped"], true);
    assert_eq!(report["static_link"], false, "Debian builds it with cgo");
    assert_eq!(report["features"][0]["available"], true);

    let prometheus = common::PrometheusServer::start("global:\n  scrape_interval: 1h\n");

    let mapscope = Mapscope::attach(prometheus.guard.0.id());
    // Natural GCs can fall between reading one side and the other, so a window is retried;
    // a real miscount repeats every time.
    let mut attempts = Vec::new();
    for _ in 0..3 {
        let (theirs_before, ours_before) = (
            own_gc_count(prometheus.address),
            settled_gc_cycles(&mapscope),
        );
        for _ in 0..5 {
            // pprof's heap profile with gc=1 runs runtime.GC() first.
            common::http_get(prometheus.address, "/debug/pprof/heap?gc=1");
        }
        let (theirs_after, ours_after) = (
            own_gc_count(prometheus.address),
            settled_gc_cycles(&mapscope),
        );
        let (theirs, ours) = (theirs_after - theirs_before, ours_after - ours_before);
        println!(
            "Debian prometheus (go1.19.8, stripped): GC cycles in the window: mapscope {ours}, prometheus's own NumGC {theirs}"
        );
        attempts.push((ours, theirs));
        if ours == theirs {
            break;
        }
    }
    let &(ours, theirs) = attempts.last().unwrap();
    assert!(theirs >= 5, "five forced GCs: {attempts:?}");
    assert_eq!(
        ours, theirs,
        "GC cycles, mapscope vs prometheus's own count: {attempts:?}"
    );
    let pauses = mapscope
        .scrape()
        .sum("mapscope_stw_pause_seconds_count", common::is_gc_reason);
    assert!(pauses >= 10.0, "each forced GC has two GC pauses");
}

/// mapscope's cycle count once its 250 ms drain has caught up.
fn settled_gc_cycles(mapscope: &Mapscope) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut last = mapscope.scrape().gc_cycles();
    loop {
        std::thread::sleep(Duration::from_millis(400));
        let now = mapscope.scrape().gc_cycles();
        if now == last || Instant::now() > deadline {
            return now;
        }
        last = now;
    }
}
