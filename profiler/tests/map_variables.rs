//! Package-level map variables found in the binary (`gobin::variables`) against the Go program's
//! own report (testdata/go/mapvars: each variable's address, the header pointer it holds, its
//! map type descriptor and `reflect`'s name for the type), for several releases, a PIE, and
//! builds without DWARF.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a failure here is a test failure"
)]

mod common;

use std::{
    os::unix::fs::FileExt as _,
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use mapscope::gobin::{GoBinary, variables::MapVariable};

/// What testdata/go/mapvars reports about one of its map variables, at run-time addresses.
#[derive(Debug, serde::Deserialize)]
struct Reported {
    name: String,
    address: u64,
    header: u64,
    type_descriptor: u64,
    #[serde(rename = "type")]
    type_name: String,
}

/// Package-level variables of mapvars that hold no map.
const NOT_MAPS: [&str; 3] = ["main.counter", "main.greetings", "main.lookup"];

/// Run mapvars: its report, its load bias (where the kernel put it minus its lowest link-time
/// address), and the 8 bytes at each reported variable, read from its memory.
fn run(path: &Path, binary: &GoBinary) -> (Vec<Reported>, u64, Vec<u64>) {
    let mut command = Command::new(path);
    command.stdin(Stdio::piped()).stdout(Stdio::piped());
    let mut child = common::ChildGuard(common::spawn_retrying_busy(&mut command));
    let stdout = common::Lines::new(child.0.stdout.take().unwrap());
    let line = stdout.wait_for("mapvars's report", Duration::from_secs(30), |line| {
        line.starts_with('[')
    });
    let reported: Vec<Reported> = serde_json::from_str(&line).unwrap();
    let pid = child.0.id();
    let executable = std::fs::canonicalize(path).unwrap();
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let start = maps
        .lines()
        .filter(|line| line.ends_with(executable.to_str().unwrap()))
        .filter_map(|line| u64::from_str_radix(line.split('-').next()?, 16).ok())
        .min()
        .unwrap_or_else(|| panic!("{} is not mapped:\n{maps}", executable.display()));
    let bias = start - binary.lowest_address().unwrap();
    let memory = std::fs::File::open(format!("/proc/{pid}/mem")).unwrap();
    let held = reported
        .iter()
        .map(|variable| {
            let mut word = [0u8; 8];
            memory.read_exact_at(&mut word, variable.address).unwrap();
            u64::from_le_bytes(word)
        })
        .collect();
    (reported, bias, held)
}

fn check(version: &str, flags: &[&str]) {
    let path = common::build_go("mapvars", version, flags);
    let binary = GoBinary::open(&path, &[]).unwrap();
    let found = binary.map_variables().unwrap();
    let (reported, bias, held) = run(&path, &binary);
    assert_eq!(reported.len(), 4, "mapvars reports four maps");
    for (theirs, held) in reported.iter().zip(held) {
        let ours: Option<&MapVariable> = found.iter().find(|ours| ours.name == theirs.name);
        let ours = ours.unwrap_or_else(|| {
            panic!(
                "Go {version} {flags:?}: {} not found; found {found:#?}",
                theirs.name
            )
        });
        assert_eq!(
            (
                ours.address + bias,
                ours.type_descriptor + bias,
                ours.type_name.as_str()
            ),
            (
                theirs.address,
                theirs.type_descriptor,
                theirs.type_name.as_str()
            ),
            "Go {version} {flags:?}: {} (load bias {bias:#x})",
            theirs.name
        );
        // The variable holds the map's header pointer (nil for main.unused).
        assert_eq!(
            held, theirs.header,
            "Go {version} {flags:?}: {}",
            theirs.name
        );
    }
    for name in NOT_MAPS {
        assert!(
            found.iter().all(|ours| ours.name != name),
            "Go {version} {flags:?}: {name} holds no map"
        );
    }
    // The runtime's and the standard library's map variables are found too (the caller
    // filters by size): all of them in the data sections, with distinct addresses.
    assert!(found.len() > reported.len(), "{found:#?}");
    assert!(
        found
            .windows(2)
            .all(|pair| pair[0].address < pair[1].address)
    );
}

fn check_release(version: &str) {
    check(version, &[]);
}

common::per_go_release! {
    check_release;
    variables_match_runtime_go1_19 => "1.19.8",
    variables_match_runtime_go1_23 => "1.23.9",
    variables_match_runtime_go1_24 => "1.24.11",
    variables_match_runtime_go1_27 => "1.27.3",
}

#[test]
#[ignore = "needs Go toolchains: run `cargo xtask test`"]
fn variables_match_runtime_in_a_pie() {
    check(common::NEWEST_GO, &["-buildmode=pie"]);
}

#[test]
#[ignore = "needs Go toolchains: run `cargo xtask test`"]
fn no_dwarf_means_no_variables_and_no_error() {
    // `-w` keeps the symbol table, which names the variables but not their types.
    for flags in ["-ldflags=-s -w", "-ldflags=-w"] {
        let path = common::build_go("mapvars", common::NEWEST_GO, &[flags]);
        let binary = GoBinary::open(&path, &[]).unwrap();
        assert!(!binary.layout.dwarf);
        assert_eq!(binary.map_variables().unwrap(), Vec::new(), "{flags}");
    }
}

/// One of mapscope's map snapshots (`/debug/maps`), as far as this test reads it.
#[derive(Debug, serde::Deserialize)]
struct Snapshot {
    address: u64,
    site: String,
    site_kind: String,
    entries: u64,
    #[serde(rename = "type")]
    type_name: Option<String>,
}

/// `mapscope attach` with no discovery windows on a program whose maps were all filled before
/// it attached and are never touched again: only the binary's variables can reveal them. The
/// maps of 128 entries or more that the variables hold are snapshotted, named by their
/// variable, with the program's own entry counts and types; the small one is not.
fn mapscope_reads_maps_held_in_variables(version: &str, flags: &[&str]) {
    let path = common::build_go("mapvars", version, flags);
    // Started once it said "ready", after its report.
    let target = common::GoTarget::start(&path, &[]);
    let line = target
        .stdout
        .all()
        .lines()
        .find(|line| line.starts_with('['))
        .expect("mapvars's report")
        .to_owned();
    let reported: Vec<Reported> = serde_json::from_str(&line).unwrap();
    let entries: Vec<u64> = serde_json::from_str::<Vec<serde_json::Value>>(&line)
        .unwrap()
        .iter()
        .map(|variable| variable["entries"].as_u64().unwrap())
        .collect();
    let pid = target.pid().to_string();
    let mapscope = common::Mapscope::start(&[
        "attach",
        "--pid",
        &pid,
        "--listen",
        "127.0.0.1:0",
        "--map-discovery",
        "off",
        "--map-snapshot-interval",
        "1s",
    ]);
    let big: Vec<(&Reported, u64)> = reported
        .iter()
        .zip(entries)
        .filter(|(_, entries)| *entries >= 128)
        .collect();
    assert_eq!(
        big.len(),
        2,
        "mapvars holds two maps of 128+ entries: {line}"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let found = loop {
        let body = common::http_get(mapscope.address, "/debug/maps?addresses=1");
        let maps: Vec<Snapshot> = serde_json::from_value(
            serde_json::from_str::<serde_json::Value>(&body).unwrap()["maps"].clone(),
        )
        .unwrap();
        if big
            .iter()
            .all(|(variable, _)| maps.iter().any(|map| map.address == variable.header))
            || std::time::Instant::now() > deadline
        {
            break maps;
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    for (variable, entries) in &big {
        let map = found
            .iter()
            .find(|map| map.address == variable.header)
            .unwrap_or_else(|| panic!("{} not snapshotted: {found:#?}", variable.name));
        println!(
            "Go {version} {flags:?}: {} holds {entries} entries; mapscope: {} {} {} entries",
            variable.name, map.site_kind, map.site, map.entries
        );
        assert_eq!(map.site, variable.name);
        assert_eq!(map.site_kind, "variable");
        assert_eq!(map.entries, *entries, "{}", variable.name);
        assert_eq!(map.type_name.as_deref(), Some(variable.type_name.as_str()));
    }
    assert_eq!(found.len(), big.len(), "only the big maps: {found:#?}");
}

#[test]
#[ignore = "needs root and Go toolchains: run `cargo xtask test`"]
fn mapscope_reads_maps_held_in_variables_go1_23() {
    mapscope_reads_maps_held_in_variables("1.23.9", &[]);
}

#[test]
#[ignore = "needs root and Go toolchains: run `cargo xtask test`"]
fn mapscope_reads_maps_held_in_variables_go1_27_pie() {
    mapscope_reads_maps_held_in_variables("1.27.3", &["-buildmode=pie"]);
}
