//! Allocation sites and churn by site, against the Go toolchain's own view: `go tool pprof` on
//! the heap profile the target writes about itself for the same run.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a failure here is a test failure"
)]

mod common;

use std::{collections::BTreeMap, time::Duration};

use common::{GoTarget, Mapscope};

/// main.* functions and their alloc_space, as `go tool pprof -top` ranks them (flat).
fn pprof_ranking(
    version: &str,
    binary: &std::path::Path,
    profile: &std::path::Path,
) -> Vec<(String, f64)> {
    let top = common::go_tool(
        version,
        &[
            "pprof",
            "-sample_index=alloc_space",
            "-unit=B",
            "-top",
            binary.to_str().unwrap(),
            profile.to_str().unwrap(),
        ],
    );
    top.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (flat, name) = (fields.first()?, fields.last()?);
            let bytes: f64 = flat.trim_end_matches('B').parse().ok()?;
            (name.starts_with("main.") && bytes > 0.0).then(|| (name.to_string(), bytes))
        })
        .collect()
}

/// Two rankings of main.* functions give each function the same share of bytes, within 3
/// points, whichever ranking names it. A function one of them lacks counts as 0: the runtime's
/// profile also holds what the target allocated before mapscope attached (main.main's start-up,
/// one 512 KiB sample now and then), a sliver the tolerance covers, while a function with a
/// real share that one side lacks fails.
fn assert_same_shares(expected: &[(String, f64)], actual: &[(String, f64)], what: &str) {
    let total = |ranking: &[(String, f64)]| ranking.iter().map(|(_, bytes)| bytes).sum::<f64>();
    let share = |ranking: &[(String, f64)], name: &str| {
        ranking
            .iter()
            .find(|(n, _)| n == name)
            .map_or(0.0, |(_, bytes)| bytes / total(ranking))
    };
    assert!(
        !expected.is_empty() && !actual.is_empty(),
        "{what}: {actual:?} vs {expected:?}"
    );
    for (name, _) in expected.iter().chain(actual) {
        let (theirs, ours) = (share(expected, name), share(actual, name));
        assert!(
            (theirs - ours).abs() < 0.03,
            "{what}: {name} has {ours:.3} of bytes, pprof on the runtime's profile {theirs:.3} \
             ({actual:?} vs {expected:?})"
        );
    }
}

fn compare(version: &str) {
    let binary = common::build_go("allocsites", version, &[]);
    let mut target = GoTarget::start(&binary, &["-duration", "2s"]);
    let mapscope = Mapscope::attach_unbudgeted(target.pid());
    target.send("go");
    target
        .stdout
        .wait_for("the report", Duration::from_secs(60), |line| {
            line.starts_with('{')
        });
    let profile = tempfile::NamedTempFile::new().unwrap();
    target.send(&format!("heap {}", profile.path().display()));
    target
        .stdout
        .wait_for("the heap profile", Duration::from_secs(30), |line| {
            line.starts_with("heap written")
        });
    std::thread::sleep(Duration::from_millis(1500));
    let metrics = mapscope.scrape();

    let mut ours: BTreeMap<String, f64> = BTreeMap::new();
    for sample in metrics
        .0
        .iter()
        .filter(|s| s.name == "mapscope_alloc_site_bytes_total")
    {
        let function = &sample.labels["function"];
        if function.starts_with("main.") {
            *ours.entry(function.clone()).or_default() += sample.value;
        }
    }
    let mut ours: Vec<(String, f64)> = ours.into_iter().collect();
    ours.sort_by(|a, b| b.1.total_cmp(&a.1));
    let theirs = pprof_ranking(version, &binary, profile.path());
    println!(
        "Go {version}: allocation sites by bytes\n  mapscope: {ours:?}\n  pprof:    {theirs:?}"
    );

    let names = |ranking: &[(String, f64)]| {
        ranking
            .iter()
            .map(|(name, _)| name.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        names(&ours).len(),
        5,
        "the five allocating functions: {ours:?}"
    );
    // Both rank the runtime's very same samples, so they agree on each function's share; the
    // order may differ only between functions within 5% of each other. The runtime's profile
    // also holds what the target allocated before mapscope attached (main.main's start-up, a
    // sample now and then): a function mapscope never saw ranks last, and functions under 3%
    // of the bytes are left to the share check above, whose tolerance they are within.
    let total: f64 = theirs.iter().map(|(_, bytes)| bytes).sum();
    let our_total: f64 = ours.iter().map(|(_, bytes)| bytes).sum();
    for (name, bytes) in &theirs {
        let share = bytes / total;
        let our_share = ours
            .iter()
            .find(|(n, _)| n == name)
            .map_or(0.0, |(_, b)| b / our_total);
        assert!(
            (share - our_share).abs() < 0.03,
            "{name}: pprof share {share:.3}, mapscope {our_share:.3}"
        );
    }
    for pair in theirs.windows(2) {
        let (first, second) = (&pair[0], &pair[1]);
        if first.1 > second.1 * 1.05 && second.1 / total >= 0.03 {
            let position = |name: &str| {
                names(&ours)
                    .iter()
                    .position(|n| n == name)
                    .unwrap_or(usize::MAX)
            };
            assert!(
                position(&first.0) < position(&second.0),
                "{} ranks above {} in pprof, not in mapscope",
                first.0,
                second.0
            );
        }
    }

    // The profile served at /debug/pprof/allocs opens in go tool pprof and ranks the same.
    let served = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        served.path(),
        common::http_get_bytes(mapscope.address, "/debug/pprof/allocs"),
    )
    .unwrap();
    assert_same_shares(
        &theirs,
        &pprof_ranking(version, &binary, served.path()),
        "/debug/pprof/allocs",
    );

    // Churn patterns land on the functions that cause them.
    let churn = |kind: &str| -> Vec<String> {
        metrics
            .0
            .iter()
            .filter(|s| {
                s.name == "mapscope_alloc_churn_objects_total"
                    && s.labels["kind"] == kind
                    && s.value > 0.0
            })
            .map(|s| s.labels["function"].clone())
            .collect()
    };
    assert!(
        churn("growslice").contains(&"main.growSlice".to_owned()),
        "{:?}",
        churn("growslice")
    );
    assert!(
        churn("makemap_small").contains(&"main.smallMaps".to_owned()),
        "{:?}",
        churn("makemap_small")
    );
    assert!(
        churn("makemap").contains(&"main.presizedMaps".to_owned()),
        "{:?}",
        churn("makemap")
    );
    target.send("exit");
}

common::per_go_release! {
    compare;
    sites_match_pprof_go1_19 => "1.19.8",
    sites_match_pprof_go1_21 => "1.21.13",
    sites_match_pprof_go1_23 => "1.23.9",
    sites_match_pprof_go1_24 => "1.24.11",
    sites_match_pprof_go1_27 => "1.27.3",
}

/// `mapscope profile alloc` writes a profile that go tool pprof opens, with the shares of the
/// runtime's own heap profile; with the runtime's sampling off, from mapscope's own counting
/// (within the default budget), naming the one function that allocates.
#[test]
#[ignore = "needs root and Go toolchains: run `cargo xtask test`"]
fn profile_alloc_command() {
    let version = common::NEWEST_GO;
    let binary = common::build_go("allocsites", version, &[]);
    let mut target = GoTarget::start(&binary, &["-duration", "3s"]);
    let output = tempfile::NamedTempFile::new().unwrap();
    target.send("go");
    let run = std::process::Command::new(common::MAPSCOPE)
        .args([
            "profile",
            "alloc",
            "--pid",
            &target.pid().to_string(),
            "--duration",
            "2s",
            "-o",
        ])
        .arg(output.path())
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    target
        .stdout
        .wait_for("the report", Duration::from_secs(60), |line| {
            line.starts_with('{')
        });
    let heap = tempfile::NamedTempFile::new().unwrap();
    target.send(&format!("heap {}", heap.path().display()));
    target
        .stdout
        .wait_for("the heap profile", Duration::from_secs(30), |line| {
            line.starts_with("heap written")
        });
    let ours = pprof_ranking(version, &binary, output.path());
    println!("mapscope profile alloc: {ours:?}");
    assert_same_shares(
        &pprof_ranking(version, &binary, heap.path()),
        &ours,
        "mapscope profile alloc",
    );
    target.send("exit");

    let nosampling = common::build_go("nosampling", version, &[]);
    let unsampled = GoTarget::start(&nosampling, &[]);
    let run = std::process::Command::new(common::MAPSCOPE)
        .args([
            "profile",
            "alloc",
            "--pid",
            &unsampled.pid().to_string(),
            "--duration",
            "3s",
            "-o",
        ])
        .arg(output.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    assert!(stderr.contains("counts allocations itself"), "{stderr}");
    let ranking = pprof_ranking(version, &nosampling, output.path());
    println!("mapscope profile alloc, sampling off: {ranking:?}");
    assert_eq!(
        ranking.first().map(|(name, _)| name.as_str()),
        Some("main.main.func2"),
        "the allocating goroutine: {ranking:?}"
    );
}

/// Site bytes by site (function, location): one entry per series, from one scrape.
fn site_bytes(metrics: &common::Metrics) -> BTreeMap<(String, String), f64> {
    metrics
        .0
        .iter()
        .filter(|sample| sample.name == "mapscope_alloc_site_bytes_total")
        .map(|sample| {
            let site = (
                sample.labels["function"].clone(),
                sample.labels["location"].clone(),
            );
            (site, sample.value)
        })
        .collect()
}

/// Whether any of `sites` is in `function`.
fn has_function(sites: &BTreeMap<(String, String), f64>, function: &str) -> bool {
    sites.keys().any(|(name, _)| name == function)
}

/// The named sites follow the load: a target whose allocating functions change, twice, with
/// 2 named sites. After each change the named sites hold at least 90% of the estimated bytes
/// of the new phase (where the first sites to rank, kept for good, held none), no series ever
/// goes down, and there are never more than 2 × 2 + 1 site series.
#[test]
#[ignore = "needs root and Go toolchains: run `cargo xtask test`"]
fn the_named_sites_follow_the_load() {
    const TOP: usize = 2;
    let binary = common::build_go("allocsites", common::NEWEST_GO, &[]);
    let mut target = GoTarget::start(&binary, &["-duration", "3s"]);
    let mapscope = Mapscope::start(&[
        "attach",
        "--pid",
        &target.pid().to_string(),
        "--listen",
        "127.0.0.1:0",
        "--alloc-top-sites",
        &TOP.to_string(),
        "--alloc-sites-half-life",
        "200ms",
        // Phases of 3 s: a duty-cycled sampler's estimates come in steps longer than that.
        "--max-overhead",
        "0",
    ]);
    let mut last: BTreeMap<(String, String), f64> = BTreeMap::new();
    let mut reports = 0;
    // Run one phase, scraping all along: counters only grow, series stay within the bound.
    let mut phase = |functions: &str| -> BTreeMap<(String, String), f64> {
        target.send(&format!("go {functions}"));
        reports += 1;
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let mut settled_at = None;
        loop {
            let now = site_bytes(&mapscope.scrape());
            assert!(
                now.len() <= 2 * TOP + 1,
                "{} site series: {now:?}",
                now.len()
            );
            for (site, bytes) in &now {
                let before = last.get(site).copied().unwrap_or(0.0);
                assert!(*bytes >= before, "{site:?} went from {before} to {bytes}");
            }
            last = now;
            let reported = target
                .stdout
                .all()
                .lines()
                .filter(|line| line.starts_with('{'))
                .count();
            // Two more reads (one a second) after the phase ended, so its bytes are all in.
            if reported >= reports {
                let settled = *settled_at.get_or_insert_with(std::time::Instant::now);
                if settled.elapsed() > Duration::from_millis(2500) {
                    return last.clone();
                }
            }
            assert!(std::time::Instant::now() < deadline, "phase {functions}");
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    let named_share = |before: &BTreeMap<(String, String), f64>,
                       after: &BTreeMap<(String, String), f64>| {
        let gained =
            |site: &(String, String)| after[site] - before.get(site).copied().unwrap_or(0.0);
        let total: f64 = after.keys().map(gained).sum();
        let named: f64 = after
            .keys()
            .filter(|(function, _)| function != "other")
            .map(gained)
            .sum();
        (named / total, total)
    };

    let first = phase("allocLarge,growSlice");
    assert!(
        has_function(&first, "main.allocLarge") && has_function(&first, "main.growSlice"),
        "{first:?}"
    );
    let second = phase("allocSmall,smallMaps");
    let (share, bytes) = named_share(&first, &second);
    println!("second phase: named sites hold {share:.3} of {bytes:.0} bytes: {second:?}");
    assert!(share >= 0.9, "{share:.3}: {first:?} → {second:?}");
    for retired in ["main.allocLarge", "main.growSlice"] {
        assert!(
            has_function(&second, retired),
            "{retired} keeps its series: {second:?}"
        );
    }
    let third = phase("presizedMaps");
    let (share, bytes) = named_share(&second, &third);
    println!("third phase: named sites hold {share:.3} of {bytes:.0} bytes: {third:?}");
    assert!(share >= 0.9, "{share:.3}: {second:?} → {third:?}");
    // Three retired, room for two: the oldest retired (a first-phase site) is forgotten.
    assert!(
        !(has_function(&third, "main.allocLarge") && has_function(&third, "main.growSlice")),
        "{third:?}"
    );
    target.send("exit");
}
