//! Go maps: mapscope's snapshots and event counts against the target's own view of its maps,
//! computed in-process through unsafe by testdata/go/mapshapes, for bucket maps (Go ≤ 1.23)
//! and swiss tables (Go 1.24+).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a failure here is a test failure"
)]

mod common;

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use common::{GoTarget, Mapscope, per_go_release};

/// One map as the target reports it about itself.
#[derive(Debug, serde::Deserialize)]
struct Shape {
    name: String,
    function: String,
    address: u64,
    layout: String,
    entries: u64,
    capacity_slots: u64,
    bytes: u64,
    bucket_entries: BTreeMap<u32, u64>,
    #[serde(default)]
    chain_lengths: BTreeMap<u32, u64>,
    #[serde(default)]
    tombstones: BTreeMap<u32, u64>,
    growths: u64,
    overflows: u64,
    #[serde(default)]
    b: u8,
    #[serde(default)]
    tables: u64,
    /// Bucket maps: the target's own random-hash expectation of buckets per entry count.
    #[serde(default)]
    random_hash: BTreeMap<u32, f64>,
    #[serde(rename = "type")]
    type_name: String,
    key_bytes: u64,
    elem_bytes: u64,
}

#[derive(Debug, serde::Deserialize)]
struct ShapesReport {
    maps: Vec<Shape>,
}

fn shapes(target: &mut GoTarget, command: &str) -> Vec<Shape> {
    target.send(command);
    let line = target
        .stdout
        .wait_for("the map report", Duration::from_secs(120), |line| {
            line.starts_with('{')
        });
    let report: ShapesReport =
        serde_json::from_str(&line).unwrap_or_else(|error| panic!("bad report {line}: {error}"));
    assert_eq!(report.maps.len(), 4, "{line}");
    report.maps
}

/// mapscope's latest snapshots (`/debug/maps`).
fn snapshots(mapscope: &Mapscope) -> Vec<serde_json::Value> {
    let body = common::http_get(mapscope.address, "/debug/maps?addresses=1");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    json["maps"].as_array().cloned().unwrap_or_default()
}

fn snapshot_of(snapshots: &[serde_json::Value], address: u64) -> Option<&serde_json::Value> {
    snapshots
        .iter()
        .find(|snapshot| snapshot["address"].as_u64() == Some(address))
}

fn distribution(value: &serde_json::Value) -> BTreeMap<u32, u64> {
    value
        .as_object()
        .map(|object| {
            object
                .iter()
                .map(|(key, count)| (key.parse().unwrap(), count.as_u64().unwrap()))
                .collect()
        })
        .unwrap_or_default()
}

/// Wait until mapscope has a snapshot of every map that agrees with the target on its entry
/// count (snapshots taken while the maps were being built are older).
fn settled_snapshots(mapscope: &Mapscope, maps: &[Shape]) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let found = snapshots(mapscope);
        let all = maps.iter().all(|map| {
            snapshot_of(&found, map.address)
                .is_some_and(|snapshot| snapshot["entries"].as_u64() == Some(map.entries))
        });
        if all || Instant::now() > deadline {
            return found;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn start(version: &str) -> (GoTarget, Mapscope) {
    // The pre-sized swiss map never grows: only its creation reveals it.
    start_built(version, &[], &["--map-creations"])
}

/// mapshapes built with `build_flags`, and `mapscope attach` snapshotting every second with
/// `options` besides. The map event probes stay attached all the time (`--max-overhead 0`):
/// these tests compare every growth and overflow with the target's own count over a few
/// seconds, which a duty-cycled family's scaled estimates only approach over several cycles
/// (tests/overhead.rs tests those).
fn start_built(version: &str, build_flags: &[&str], options: &[&str]) -> (GoTarget, Mapscope) {
    let binary = common::build_go("mapshapes", version, build_flags);
    let target = GoTarget::start(&binary, &[]);
    let pid = target.pid().to_string();
    let mut args = vec![
        "attach",
        "--pid",
        &pid,
        "--listen",
        "127.0.0.1:0",
        "--map-snapshot-interval",
        "1s",
        "--max-overhead",
        "0",
    ];
    args.extend_from_slice(options);
    let mapscope = Mapscope::start(&args);
    (target, mapscope)
}

fn site_is(function: &str) -> impl Fn(&BTreeMap<String, String>) -> bool + '_ {
    move |labels| {
        labels
            .get("site")
            .is_some_and(|site| site.starts_with(&format!("{function} (")))
    }
}

/// mapshapes with its maps built, then only read and rewritten (`use`), as a service uses maps
/// it built long ago; and the target's own view of them.
fn maps_built_then_used(version: &str) -> (GoTarget, Vec<Shape>) {
    let binary = common::build_go("mapshapes", version, &[]);
    let mut target = GoTarget::start(&binary, &[]);
    let maps = shapes(&mut target, "build");
    target.send("use");
    target
        .stdout
        .wait_for("the maps in use", Duration::from_secs(30), |line| {
            line == "ok"
        });
    (target, maps)
}

/// Quiescent maps: every snapshot figure equals the target's own, and the growth and overflow
/// counts by site equal what the target counted while building.
fn snapshots_match_the_runtime(version: &str) {
    let (mut target, mapscope) = start(version);
    let maps = shapes(&mut target, "build");
    let found = settled_snapshots(&mapscope, &maps);
    let bucket_maps = maps[0].layout == "buckets";
    let metrics = mapscope.scrape();
    println!("Go {version}: map, entries, capacity, bytes, growths, overflows (target | mapscope)");
    for map in &maps {
        let snapshot = snapshot_of(&found, map.address).unwrap_or_else(|| {
            panic!(
                "no snapshot of {} at {:#x}: {found:#?}",
                map.name, map.address
            )
        });
        let site = snapshot["site"].as_str().unwrap();
        let growths = metrics.sum("mapscope_map_growths_total", site_is(&map.function));
        let overflows = metrics.sum(
            "mapscope_map_overflow_buckets_total",
            site_is(&map.function),
        );
        println!(
            "  {:9} {:7} {:7} | {:7} {:7} {:8} | {:8} {:4} | {:4} {:5} | {:5}",
            map.name,
            map.entries,
            snapshot["entries"],
            map.capacity_slots,
            snapshot["capacity_slots"],
            map.bytes,
            snapshot["bytes"],
            map.growths,
            growths,
            map.overflows,
            overflows
        );
        assert!(
            site.starts_with(&format!("{} (main.go:", map.function)),
            "{}: site {site}",
            map.name
        );
        assert_snapshot_is(map, snapshot);
        if bucket_maps {
            assert_eq!(
                overflows as u64, map.overflows,
                "{}: overflow buckets",
                map.name
            );
        } else {
            assert!(!metrics.has("mapscope_map_overflow_buckets_total"));
        }
        assert_eq!(growths as u64, map.growths, "{}: growths", map.name);
        // One map per site here, so the site's gauges are this map's figures.
        for (gauge, expected) in [
            ("mapscope_map_entries", map.entries),
            ("mapscope_map_capacity_slots", map.capacity_slots),
            ("mapscope_map_bytes", map.bytes),
        ] {
            assert_eq!(
                metrics.sum(gauge, site_is(&map.function)) as u64,
                expected,
                "{}: {gauge}",
                map.name
            );
        }
    }
    assert!(
        maps.iter().any(|map| map.growths > 5) && maps.iter().any(|map| map.growths == 0),
        "the shapes must include grown and pre-sized maps"
    );
    histograms_match_one_round(&mapscope, &maps, bucket_maps);
    let stderr = mapscope.stderr.all();
    assert!(!stderr.contains("ERROR"), "{stderr}");

    // The exit summary lists the biggest maps with the target's own figures.
    let mut mapscope = mapscope;
    mapscope.signal(libc::SIGTERM);
    assert!(mapscope.wait(Duration::from_secs(60)).success());
    let summary = mapscope.stdout.all();
    let biggest = maps.iter().max_by_key(|map| map.bytes).unwrap();
    let line = summary
        .lines()
        .find(|line| line.contains(&format!("at {} (main.go:", biggest.function)))
        .unwrap_or_else(|| panic!("{} not in the summary:\n{summary}", biggest.name));
    assert!(
        line.contains(&format!(": {} entries,", biggest.entries))
            && line.contains(&format!(", {} growths,", biggest.growths))
            && line.contains(&biggest.type_name),
        "{} ({} entries, {} growths): {line}",
        biggest.name,
        biggest.entries,
        biggest.growths
    );
    assert!(summary.contains("  maps: "), "{summary}");
}

/// Every figure of one snapshot equals the target's own view of the map: layout, type, entries,
/// capacity, bytes, the entries-per-bucket (or full-slots-per-group) distribution, and the
/// chains and B (bucket maps) or tables and tombstones (swiss tables).
fn assert_snapshot_is(map: &Shape, snapshot: &serde_json::Value) {
    let bucket_maps = map.layout == "buckets";
    assert_eq!(snapshot["layout"], map.layout.as_str());
    // The type as reflect names it (a named map type by its name), and its sizes.
    assert_eq!(
        (
            snapshot["type"].as_str(),
            snapshot["key_bytes"].as_u64(),
            snapshot["elem_bytes"].as_u64()
        ),
        (
            Some(map.type_name.as_str()),
            Some(map.key_bytes),
            Some(map.elem_bytes)
        ),
        "{}: type",
        map.name
    );
    assert_eq!(
        snapshot["entries"].as_u64(),
        Some(map.entries),
        "{}",
        map.name
    );
    assert_eq!(
        snapshot["capacity_slots"].as_u64(),
        Some(map.capacity_slots),
        "{}",
        map.name
    );
    assert_eq!(snapshot["bytes"].as_u64(), Some(map.bytes), "{}", map.name);
    assert_eq!(
        distribution(&snapshot["bucket_entries"]),
        map.bucket_entries,
        "{}: entries per bucket",
        map.name
    );
    if bucket_maps {
        assert_eq!(snapshot["log2_buckets"].as_u64(), Some(u64::from(map.b)));
        assert_eq!(
            distribution(&snapshot["overflow_chains"]),
            map.chain_lengths,
            "{}: chains",
            map.name
        );
    } else {
        assert_eq!(
            snapshot["tables"].as_array().map_or(0, Vec::len) as u64,
            map.tables,
            "{}",
            map.name
        );
        assert_eq!(
            distribution(&snapshot["tombstones"]),
            map.tombstones,
            "{}: tombstones",
            map.name
        );
    }
}

/// The histograms gain, per snapshot round of quiescent maps, exactly each map's distribution
/// (the JSON's sums agree with the metrics).
fn histograms_match_one_round(mapscope: &Mapscope, maps: &[Shape], bucket_maps: bool) {
    let snapshots_taken =
        |metrics: &common::Metrics| metrics.sum("mapscope_map_snapshots_total", |_| true);
    // Scrape between rounds: once the snapshot counter has moved and then stayed still for
    // 400 ms (rounds are 1 s apart and take a few tens of ms).
    let quiet_scrape = || {
        let before = snapshots_taken(&mapscope.scrape());
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut last = (before, Instant::now());
        loop {
            let now = mapscope.scrape();
            let taken = snapshots_taken(&now);
            if taken != last.0 {
                last = (taken, Instant::now());
            } else if taken > before && last.1.elapsed() >= Duration::from_millis(400) {
                return now;
            }
            assert!(
                Instant::now() < deadline,
                "no quiet point between snapshot rounds in 10 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let first = quiet_scrape();
    let second = quiet_scrape();
    type Of = fn(&Shape) -> &BTreeMap<u32, u64>;
    let histograms: &[(&str, Of)] = if bucket_maps {
        &[
            ("mapscope_map_bucket_entries", |map| &map.bucket_entries),
            ("mapscope_map_overflow_chain_length", |map| {
                &map.chain_lengths
            }),
        ]
    } else {
        &[
            ("mapscope_map_bucket_entries", |map| &map.bucket_entries),
            ("mapscope_map_group_tombstones", |map| &map.tombstones),
        ]
    };
    for map in maps {
        for (name, of) in histograms {
            let delta = |le: &str| {
                let bucket = format!("{name}_bucket");
                let at = |metrics: &common::Metrics| {
                    metrics.sum(&bucket, |labels| {
                        site_is(&map.function)(labels)
                            && labels.get("le").map(String::as_str) == Some(le)
                    })
                };
                at(&second) - at(&first)
            };
            let distribution = of(map);
            let units: u64 = distribution.values().sum();
            // Whole snapshots of this map between the two scrapes.
            let per_round = delta("+Inf") / units as f64;
            assert!(
                per_round >= 1.0 && per_round.fract() == 0.0,
                "{}: {name} gained {} observations for {units} buckets",
                map.name,
                delta("+Inf")
            );
            for le in ["0", "1", "4", "8"] {
                let bound: u32 = le.parse().unwrap();
                let expected: u64 = distribution.range(..=bound).map(|(_, count)| count).sum();
                assert_eq!(
                    delta(le),
                    per_round * expected as f64,
                    "{}: {name} le={le}",
                    map.name
                );
            }
        }
    }
}

per_go_release! {
    snapshots_match_the_runtime;
    snapshots_go1_19 => "1.19.8",
    snapshots_go1_21 => "1.21.13",
    snapshots_go1_22 => "1.22.10",
    snapshots_go1_23 => "1.23.9",
    snapshots_go1_24 => "1.24.11",
    snapshots_go1_25 => "1.25.5",
    snapshots_go1_26 => "1.26.6",
    snapshots_go1_27 => "1.27.3",
}

/// The same exact comparison with every core kept busy (a production node's load): no growth
/// or overflow event may be lost, and every scrape sees whole snapshots. (Before counters were
/// added atomically, a busy machine lost about half a map's growths.)
fn snapshots_match_the_runtime_under_load(version: &str) {
    let _hogs = common::CpuHogs::start();
    snapshots_match_the_runtime(version);
}

per_go_release! {
    snapshots_match_the_runtime_under_load;
    snapshots_under_load_go1_23 => "1.23.9",
    snapshots_under_load_go1_25 => "1.25.5",
    snapshots_under_load_go1_27 => "1.27.3",
}

/// A stripped PIE: the map types' names are found through the moduledata's load-time
/// relocations and the load bias, and the snapshots still equal the target's own figures.
fn stripped_pie_maps_are_named(version: &str) {
    let (mut target, mapscope) = start_built(
        version,
        &["-buildmode=pie", "-ldflags=-s -w"],
        &["--map-creations"],
    );
    let maps = shapes(&mut target, "build");
    let found = settled_snapshots(&mapscope, &maps);
    for map in &maps {
        let snapshot = snapshot_of(&found, map.address)
            .unwrap_or_else(|| panic!("no snapshot of {}: {found:#?}", map.name));
        println!(
            "  {:9} {:22} {:3} {:3} | {} {} {}",
            map.name,
            map.type_name,
            map.key_bytes,
            map.elem_bytes,
            snapshot["type"],
            snapshot["key_bytes"],
            snapshot["elem_bytes"]
        );
        assert_eq!(snapshot["type"].as_str(), Some(map.type_name.as_str()));
        assert_eq!(snapshot["key_bytes"].as_u64(), Some(map.key_bytes));
        assert_eq!(snapshot["elem_bytes"].as_u64(), Some(map.elem_bytes));
        assert_eq!(snapshot["entries"].as_u64(), Some(map.entries));
        assert!(
            snapshot["site"]
                .as_str()
                .is_some_and(|site| site.starts_with(&format!("{} (main.go:", map.function))),
            "{snapshot:#}"
        );
    }
    target.send("exit");
}

per_go_release! {
    stripped_pie_maps_are_named;
    stripped_pie_go1_19 => "1.19.8",
    stripped_pie_go1_23 => "1.23.9",
    stripped_pie_go1_27 => "1.27.3",
}

/// A tracked map that is freed and whose memory is reused disappears: its snapshots are
/// dropped with a counted reason, nothing wrong is shown, nothing fails.
fn freed_map_is_dropped(version: &str) {
    let (mut target, mapscope) = start(version);
    let maps = shapes(&mut target, "build");
    let grown = maps.iter().find(|map| map.name == "grown").unwrap();
    settled_snapshots(&mapscope, &maps);
    target.send("free grown");
    let freed = target
        .stdout
        .wait_for("the map freed", Duration::from_secs(60), |line| {
            line.ends_with("reused")
        });
    assert_eq!(
        freed, "reused",
        "the Go runtime did not reuse the freed map's memory"
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let dropped = |metrics: &common::Metrics| {
        metrics.sum("mapscope_map_snapshots_dropped_total", |labels| {
            matches!(
                labels.get("reason").map(String::as_str),
                Some("inconsistent" | "unreadable")
            )
        })
    };
    loop {
        // The view first: the gauges are set at the same moment, so a scrape after it is
        // at least as new.
        let gone = snapshot_of(&snapshots(&mapscope), grown.address).is_none();
        let metrics = mapscope.scrape();
        if gone && dropped(&metrics) >= 1.0 {
            assert_eq!(
                metrics.sum("mapscope_map_entries", site_is(&grown.function)),
                0.0,
                "the freed map's site keeps no gauges"
            );
            assert!(
                !metrics
                    .0
                    .iter()
                    .any(|sample| sample.name == "mapscope_map_entries"
                        && site_is(&grown.function)(&sample.labels))
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the freed map is still shown or no drop was counted: {:#?}",
            snapshot_of(&snapshots(&mapscope), grown.address)
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    // The other maps are still read correctly.
    let found = snapshots(&mapscope);
    for map in maps.iter().filter(|map| map.name != "grown") {
        let snapshot = snapshot_of(&found, map.address).expect("the live maps stay tracked");
        assert_eq!(snapshot["entries"].as_u64(), Some(map.entries));
    }
    let stderr = mapscope.stderr.all();
    assert!(
        !stderr.contains("ERROR") && !stderr.contains("panicked"),
        "{stderr}"
    );
}

per_go_release! {
    freed_map_is_dropped;
    freed_map_go1_23 => "1.23.9",
    freed_map_go1_27 => "1.27.3",
}

/// A map written all the time while mapscope reads it: snapshots are dropped as changed or
/// kept whole; never taken for freed memory, never an error.
fn written_map_is_read_or_dropped(version: &str) {
    let (mut target, mapscope) = start(version);
    let maps = shapes(&mut target, "build");
    let grown = maps.iter().find(|map| map.name == "grown").unwrap();
    settled_snapshots(&mapscope, &maps);
    target.send("churn grown");
    target
        .stdout
        .wait_for("the churn", Duration::from_secs(30), |line| line == "ok");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let metrics = mapscope.scrape();
        // A live map written while read is "changed", never taken for garbage.
        let dropped = metrics.sum("mapscope_map_snapshots_dropped_total", |labels| {
            labels.get("reason").map(String::as_str) == Some("changed")
        });
        assert_eq!(
            metrics.sum("mapscope_map_snapshots_dropped_total", |labels| {
                matches!(
                    labels.get("reason").map(String::as_str),
                    Some("inconsistent" | "unreadable")
                )
            }),
            0.0,
            "a live map was taken for freed memory"
        );
        if let Some(snapshot) = snapshot_of(&snapshots(&mapscope), grown.address) {
            // Kept snapshots add up: entries over buckets equal the entry count.
            let counted: u64 = distribution(&snapshot["bucket_entries"])
                .iter()
                .map(|(entries, buckets)| u64::from(*entries) * buckets)
                .sum();
            assert_eq!(Some(counted), snapshot["entries"].as_u64());
        }
        if dropped >= 1.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no snapshot of the churning map was dropped"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    let stderr = mapscope.stderr.all();
    assert!(
        !stderr.contains("ERROR") && !stderr.contains("panicked"),
        "{stderr}"
    );
}

per_go_release! {
    written_map_is_read_or_dropped;
    written_map_go1_23 => "1.23.9",
    written_map_go1_27 => "1.27.3",
}

/// `mapscope heatmap` on maps built before it attached: every output (SVG, PNG, JSON and the
/// terminal) shows each map, with its observed spread equal to the target's own, the random-hash
/// expectation equal to the one the target computes from its own figures (bucket maps), and
/// the verdict a real map must get: the keys spread like a random hash.
fn heatmap_command(version: &str) {
    let (target, maps) = maps_built_then_used(version);
    let dir = tempfile::tempdir().unwrap();
    let pid = target.pid().to_string();
    let heatmap = |output: Option<&std::path::Path>| {
        let mut command = std::process::Command::new(common::MAPSCOPE);
        command
            .args([
                "heatmap",
                "--pid",
                &pid,
                "--site",
                "main.useMaps",
                "--duration",
                "2s",
            ])
            .env("NO_COLOR", "1")
            .env("COLUMNS", "100");
        if let Some(output) = output {
            command.args(["-o", output.to_str().unwrap()]);
        }
        let result = command.output().unwrap();
        assert!(
            result.status.success(),
            "{}",
            String::from_utf8_lossy(&result.stderr)
        );
        String::from_utf8(result.stdout).unwrap()
    };
    let [svg, png, json] = ["maps.svg", "maps.png", "maps.json"].map(|name| dir.path().join(name));
    for output in [&svg, &png, &json] {
        heatmap(Some(output));
    }
    let terminal = heatmap(None);

    // SVG: one panel per map, cells adding up to its entries, and the chart's observed bars
    // equal to the target's own entries per bucket (or full slots per group).
    let image = std::fs::read_to_string(&svg).unwrap();
    assert!(image.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""));
    assert!(image.trim_end().ends_with("</svg>"));
    let attribute = |text: &str, name: &str| -> u64 {
        let start = text.find(&format!(" {name}=\"")).unwrap() + name.len() + 3;
        let value = text[start..].split('"').next().unwrap();
        match value.strip_prefix("0x") {
            Some(hex) => u64::from_str_radix(hex, 16).unwrap(),
            None => value.parse().unwrap(),
        }
    };
    let (width, height) = (attribute(&image, "width"), attribute(&image, "height"));
    let groups: Vec<&str> = image.split("<g class=\"map\"").skip(1).collect();
    assert_eq!(groups.len(), maps.len(), "one panel per map");
    for group in &groups {
        let group = &group[..group.find("</g>").unwrap()];
        let map = maps
            .iter()
            .find(|map| map.address == attribute(group, "data-address"))
            .unwrap_or_else(|| panic!("a panel for no map of the target: {}", &group[..200]));
        let cells: Vec<&str> = group.split("<rect class=\"cell\"").skip(1).collect();
        assert_eq!(cells.len() as u64, attribute(group, "data-cells"));
        let entries: u64 = cells
            .iter()
            .map(|cell| attribute(cell, "data-entries"))
            .sum();
        assert_eq!(entries, map.entries, "{}", map.name);
        for cell in &cells {
            assert!(attribute(cell, "y") + 10 <= height);
            assert!(attribute(cell, "x") + 10 <= width);
        }
        let observed: BTreeMap<u32, u64> = group
            .split("<rect class=\"observed\"")
            .skip(1)
            .map(|bar| {
                (
                    attribute(bar, "data-value") as u32,
                    attribute(bar, "data-count"),
                )
            })
            .filter(|(_, count)| *count > 0)
            .collect();
        assert_eq!(observed, map.bucket_entries, "{}: observed bars", map.name);
    }

    // PNG: decodes, at the SVG's size.
    let pixmap = resvg::tiny_skia::Pixmap::decode_png(&std::fs::read(&png).unwrap()).unwrap();
    assert_eq!(
        (u64::from(pixmap.width()), u64::from(pixmap.height())),
        (width, height)
    );

    // JSON: the spread against a random hash, and the verdict of real maps.
    let data: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let drawn = data["maps"].as_array().unwrap();
    assert_eq!(drawn.len(), maps.len());
    println!("Go {version}: map, overfull units (mapscope | random hash), verdict");
    for snapshot in drawn {
        let map = maps
            .iter()
            .find(|map| snapshot["address"].as_u64() == Some(map.address))
            .unwrap_or_else(|| panic!("{snapshot:#}"));
        let spread = &snapshot["spread"];
        println!(
            "  {:9} {} | {:.1}  {}",
            map.name,
            spread["overfull"]["observed"],
            spread["overfull"]["expected"].as_f64().unwrap(),
            spread["verdict"]
        );
        assert_eq!(
            distribution(&spread["observed"]),
            map.bucket_entries,
            "{}",
            map.name
        );
        assert_eq!(spread["verdict"], "like_random", "{}: {spread:#}", map.name);
        for (k, target_expects) in &map.random_hash {
            let expected = spread["expected"][k.to_string()].as_f64().unwrap_or(0.0);
            assert!(
                (expected - target_expects).abs() <= 1e-6 * target_expects.max(1.0),
                "{}: buckets with {k} entries: mapscope expects {expected}, the target {target_expects}",
                map.name
            );
        }
        assert_eq!(
            map.random_hash.is_empty(),
            map.layout == "swiss",
            "{}: the target computes the binomial for bucket maps",
            map.name
        );
    }

    // The terminal: no line wider than the 100 columns asked for, every map with its verdict.
    for line in terminal.lines() {
        assert!(
            line.chars().count() <= 100,
            "{} wide: {line}",
            line.chars().count()
        );
    }
    assert_eq!(
        terminal.matches("keys spread like a random hash").count(),
        maps.len(),
        "{terminal}"
    );
}

per_go_release! {
    heatmap_command;
    heatmap_go1_23 => "1.23.9",
    heatmap_go1_27 => "1.27.3",
}

/// Maps built before mapscope attached, and only read and rewritten since: no growth, overflow
/// or creation event reveals them, so the first discovery window must. Every one is found in
/// that window (the period is an hour: there is no second), its site is the code that uses
/// it, and its snapshot equals the target's own view exactly.
fn existing_maps_are_found(version: &str) {
    let (mut target, maps) = maps_built_then_used(version);
    let pid = target.pid().to_string();
    let mapscope = Mapscope::start(&[
        "attach",
        "--pid",
        &pid,
        "--listen",
        "127.0.0.1:0",
        "--map-snapshot-interval",
        "1s",
        "--map-discovery",
        "500ms/1h",
    ]);
    let found = settled_snapshots(&mapscope, &maps);
    println!("Go {version}: map, entries (target | mapscope), site");
    for map in &maps {
        let snapshot = snapshot_of(&found, map.address).unwrap_or_else(|| {
            panic!(
                "{} ({} entries) was not found by the first window: {found:#?}",
                map.name, map.entries
            )
        });
        println!(
            "  {:9} {:7} | {:7} {}",
            map.name, map.entries, snapshot["entries"], snapshot["site"]
        );
        assert_eq!(snapshot["site_kind"], "accessed", "{}", map.name);
        assert!(
            snapshot["site"]
                .as_str()
                .is_some_and(|site| site.starts_with("main.useMaps.func1 (main.go:")),
            "{}: {}",
            map.name,
            snapshot["site"]
        );
        assert_snapshot_is(map, snapshot);
    }
    // Their figures now, not at build time: unchanged, as the target itself reports.
    let now = shapes(&mut target, "inspect");
    for (before, after) in maps.iter().zip(&now) {
        assert_eq!(
            before.bucket_entries, after.bucket_entries,
            "{}",
            before.name
        );
    }
    let metrics = mapscope.scrape();
    assert_eq!(metrics.sum("mapscope_map_growths_total", |_| true), 0.0);
    let stderr = mapscope.stderr.all();
    assert!(!stderr.contains("ERROR"), "{stderr}");
}

per_go_release! {
    existing_maps_are_found;
    existing_maps_go1_19 => "1.19.8",
    existing_maps_go1_23 => "1.23.9",
    existing_maps_go1_24 => "1.24.11",
    existing_maps_go1_27 => "1.27.3",
}

/// Operation rates: what a discovery window counts per map equals what the target did in the
/// same span of time, under a paced load (as a service under steady traffic): lookups,
/// assignments and ranges over the map. The span is the one mapscope's report gives; the target
/// keeps its own record of when it did what. (Not the load's long-run pace: on a busy machine
/// the target falls behind for a while and catches up, and one 400 ms window may land in
/// either.)
fn operation_rates_are_measured(version: &str) {
    let (mut target, mapscope) = start_built(version, &[], &["--map-discovery", "400ms/1s"]);
    let maps = shapes(&mut target, "build");
    let grown = maps.iter().find(|map| map.name == "grown").unwrap();
    let load_began_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    target.send("load grown 20000 5000 50");
    target
        .stdout
        .wait_for("the load", Duration::from_secs(30), |line| line == "ok");
    let lookups = |metrics: &common::Metrics| {
        metrics.sum("mapscope_map_operations_per_second", |labels| {
            site_is(&grown.function)(labels)
                && labels.get("op").map(String::as_str) == Some("lookup")
        })
    };
    // A window that counted entirely under the load, as the map's report gives it, with the
    // metrics scraped from the same window (its site has this one map, so the same rate).
    let deadline = Instant::now() + Duration::from_secs(60);
    let (report, metrics) = loop {
        let metrics = mapscope.scrape();
        let report = snapshot_of(&snapshots(&mapscope), grown.address).cloned();
        if let Some(report) = &report
            && report["operations_counted"]["started_unix_ms"]
                .as_u64()
                .is_some_and(|started| started > load_began_ms)
            && report["operations_per_second"]["lookups"].as_f64() == Some(lookups(&metrics))
        {
            break (report.clone(), metrics);
        }
        assert!(
            Instant::now() < deadline,
            "no discovery window measured the load in 60 s: report {report:?}, metrics' lookups {}",
            lookups(&metrics)
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let span = &report["operations_counted"];
    let seconds = span["seconds"].as_f64().unwrap();
    assert!(
        (0.39..1.0).contains(&seconds),
        "a 400 ms window counted for {seconds} s"
    );
    target.send(&format!("counted {} {seconds}", span["started_unix_ms"]));
    let line = target
        .stdout
        .wait_for("the rates", Duration::from_secs(30), |line| {
            line.starts_with('{')
        });
    let done: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert!(
        done["lookups"].as_f64().unwrap() > 1000.0,
        "the load barely ran in the window: {done}"
    );
    let rate = |op: &str| {
        metrics.sum("mapscope_map_operations_per_second", |labels| {
            site_is(&grown.function)(labels) && labels.get("op").map(String::as_str) == Some(op)
        })
    };
    for (op, key) in [
        ("lookup", "lookups"),
        ("assign", "assigns"),
        ("iterate", "iterations"),
    ] {
        let done = done[key].as_f64().unwrap();
        let measured = rate(op);
        println!(
            "Go {version}: {op}: {measured:.0}/s measured, {done:.0}/s done by the target in the \
             same {seconds:.3} s"
        );
        let reported = report["operations_per_second"][key].as_f64().unwrap();
        assert!(
            (reported - measured).abs() <= 1e-9 * measured,
            "{op}: the map's report says {reported}/s, the metrics {measured}/s"
        );
        // In counts: 3% of them, and a few at the window's edges.
        assert!(
            ((measured - done) * seconds).abs() <= 0.03 * done * seconds + 3.0,
            "{op}: measured {measured:.0}/s, the target did {done:.0}/s in the same span"
        );
    }
    // The map saw no delete: its site's delete series is there, and zero.
    assert!(
        metrics
            .0
            .iter()
            .any(|sample| sample.name == "mapscope_map_operations_per_second"
                && site_is(&grown.function)(&sample.labels)
                && sample.labels.get("op").map(String::as_str) == Some("delete")),
        "no delete series for the map's site"
    );
    assert_eq!(rate("delete"), 0.0);
    // The other maps were not used: their sites read zero.
    let presized = maps.iter().find(|map| map.name == "presized").unwrap();
    assert!(
        metrics.sum(
            "mapscope_map_operations_per_second",
            site_is(&presized.function)
        ) < 1.0
    );
}

per_go_release! {
    operation_rates_are_measured;
    operation_rates_go1_23 => "1.23.9",
    operation_rates_go1_27 => "1.27.3",
}

/// Headless Chromium, as root (so without its sandbox) and with nothing reaching for the
/// network, on a fresh profile.
fn chromium(profile: &std::path::Path) -> std::process::Command {
    let mut command = std::process::Command::new("chromium");
    command.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
    ]);
    command.arg(format!("--user-data-dir={}", profile.display()));
    command
}

/// The maps page a running `attach` serves, in a real browser: every map of the target is on it
/// with its figures (entries and slots as the target counts them), its verdict and its picture,
/// and the page renders at 1280 px.
fn maps_page_in_a_browser(version: &str) {
    let (target, maps) = maps_built_then_used(version);
    let pid = target.pid().to_string();
    let mapscope = Mapscope::start(&[
        "attach",
        "--pid",
        &pid,
        "--listen",
        "127.0.0.1:0",
        "--map-snapshot-interval",
        "1s",
    ]);
    settled_snapshots(&mapscope, &maps);
    // Unless asked, neither the page nor the data show the target's heap addresses (they would
    // undo its address-space randomization).
    for path in ["/maps", "/debug/maps", "/debug/maps/heatmap.svg"] {
        let body = common::http_get(mapscope.address, path);
        for map in &maps {
            assert!(
                !body.contains(&format!("{:#x}", map.address))
                    && !body.contains(&map.address.to_string()),
                "{path} shows {}'s address",
                map.name
            );
        }
    }
    let url = format!("http://{}/maps?addresses=1", mapscope.address);
    let scratch = tempfile::tempdir().unwrap();
    let dom = chromium(&scratch.path().join("profile"))
        .args(["--dump-dom", &url])
        .output()
        .unwrap();
    assert!(
        dom.status.success(),
        "{}",
        String::from_utf8_lossy(&dom.stderr)
    );
    let dom = String::from_utf8(dom.stdout).unwrap();
    let sections: Vec<&str> = dom.split("<section class=\"map\"").skip(1).collect();
    assert_eq!(sections.len(), maps.len(), "{dom}");
    for map in &maps {
        let section = sections
            .iter()
            .find(|section| section.contains(&format!("data-address=\"{:#x}\"", map.address)))
            .unwrap_or_else(|| panic!("{} is not on the page", map.name));
        let figures = format!("{} entries in {} slots", map.entries, map.capacity_slots);
        assert!(
            section.contains(&figures),
            "{}: no {figures:?} in {section}",
            map.name
        );
        assert!(section.contains(&map.type_name), "{}: no type", map.name);
        assert!(
            section.contains("keys spread like a random hash"),
            "{}",
            map.name
        );
        assert!(section.contains("<svg"), "{}: no picture", map.name);
    }
    let screenshot = scratch.path().join("page.png");
    let shot = chromium(&scratch.path().join("profile"))
        .arg(format!("--screenshot={}", screenshot.display()))
        .args(["--window-size=1280,2400", &url])
        .output()
        .unwrap();
    assert!(
        shot.status.success(),
        "{}",
        String::from_utf8_lossy(&shot.stderr)
    );
    let pixmap =
        resvg::tiny_skia::Pixmap::decode_png(&std::fs::read(&screenshot).unwrap()).unwrap();
    // The page drew something: many distinct colours (text, cells, bars), not a blank page.
    let colours: std::collections::BTreeSet<[u8; 3]> = pixmap
        .pixels()
        .iter()
        .map(|pixel| [pixel.red(), pixel.green(), pixel.blue()])
        .collect();
    assert!(
        colours.len() > 50,
        "{} colours on the screenshot",
        colours.len()
    );
    let stderr = mapscope.stderr.all();
    assert!(!stderr.contains("ERROR"), "{stderr}");
}

per_go_release! {
    maps_page_in_a_browser;
    maps_page_go1_23 => "1.23.9",
    maps_page_go1_27 => "1.27.3",
}
