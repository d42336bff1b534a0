//! `mapscope inspect`: the report matches what mapscope would really probe, for ordinary,
//! stripped and PIE builds, by path and by PID; bad files get one line and a non-zero exit.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a failure here is a test failure"
)]

mod common;

use std::process::{Command, Output};

use common::{GoTarget, MAPSCOPE, NEWEST_GO, inspect_json};
use mapscope::gobin::{GoBinary, abi};
use serde_json::Value;

fn inspect(args: &[&str]) -> Output {
    Command::new(MAPSCOPE)
        .arg("inspect")
        .args(args)
        .output()
        .unwrap()
}

/// The report's probe points are the entry site and RET sites the library computes.
fn check_report(version: &str, flags: &[&str], stripped: bool, pie: bool) {
    let path = common::build_go("gcload", version, flags);
    let report = inspect_json(&[path.to_str().unwrap()]);
    assert_eq!(report["go_version"], format!("go{version}"));
    assert_eq!(report["go_support"], "supported");
    assert_eq!(report["main_path"], "mapscope.test/gcload");
    assert_eq!(report["stripped"], stripped);
    assert_eq!(report["pie"], pie);
    // gcload uses no cgo, so only the PIE build (which Go links against ld.so) is dynamic.
    assert_eq!(report["static_link"], !pie);
    assert_eq!(report["dwarf"], !stripped);
    assert_eq!(
        report["dwarf_check"],
        if stripped { "no_dwarf" } else { "agrees" }
    );
    assert_eq!(report["features"][0]["name"], "gc_pause_distributions");
    assert_eq!(report["features"][0]["available"], true);

    let binary = GoBinary::open(&path, &[abi::START_THE_WORLD]).unwrap();
    let start = binary.function(abi::START_THE_WORLD).unwrap();
    let probes = report["probes"].as_array().unwrap();
    let sites = |site: &str| -> Vec<u64> {
        probes
            .iter()
            .filter(|probe| probe["function"] == abi::START_THE_WORLD && probe["site"] == site)
            .map(|probe| probe["address"].as_u64().unwrap())
            .collect()
    };
    // The pause is read at the RETs alone, after the world restarted: nothing fires inside it.
    assert_eq!(sites("entry"), Vec::<u64>::new());
    assert_eq!(sites("return"), binary.ret_sites(start));
    let pauses = &report["features"][0]["detail"];
    assert!(
        pauses
            .as_str()
            .is_some_and(|detail| detail.ends_with("none inside the pause")),
        "{pauses}"
    );
    for probe in probes {
        let address = probe["address"].as_u64().unwrap();
        assert_eq!(probe["file_offset"].as_u64(), binary.file_offset(address));
    }
    // Map probes: the growth functions of the release's map implementation, after their
    // stack check (gcload's maps grow: the functions are linked in).
    let swiss = version >= "1.24";
    let growth = if swiss {
        "internal/runtime/maps.(*table).grow"
    } else {
        "runtime.hashGrow"
    };
    let feature = |name: &str| {
        report["features"]
            .as_array()
            .unwrap()
            .iter()
            .find(|feature| feature["name"] == name)
            .unwrap_or_else(|| panic!("no feature {name}: {report:#}"))
            .clone()
    };
    // GC triggers: gcStart and gcBgMarkStartWorkers, at their entries.
    let triggers = feature("gc_cycle_triggers");
    assert_eq!(triggers["available"], true, "{triggers}");
    let binary = GoBinary::open(&path, &[abi::GC_START, abi::GC_BG_MARK_START_WORKERS]).unwrap();
    for function in [abi::GC_START, abi::GC_BG_MARK_START_WORKERS] {
        let entry = binary.entry_site(binary.function(function).unwrap());
        assert!(
            probes.iter().any(|probe| probe["function"] == function
                && probe["site"] == "entry"
                && probe["address"].as_u64() == Some(entry)),
            "{function}: {probes:#?}"
        );
    }
    let maps = feature("go_maps");
    assert_eq!(maps["available"], true, "{maps}");
    let layout = if swiss { "swiss tables" } else { "bucket maps" };
    assert!(
        maps["detail"].as_str().unwrap().starts_with(layout),
        "{maps}"
    );
    let binary = GoBinary::open(&path, &[growth]).unwrap();
    let function = binary.function(growth).unwrap();
    assert!(
        probes.iter().any(|probe| probe["function"] == growth
            && probe["address"].as_u64() == Some(binary.entry_site(function))),
        "{probes:#?}"
    );
    // Discovery windows: the map operations the program calls (gcload assigns to maps), each
    // after its frame setup, so the stack walk sees the code that called it.
    let discovery = feature("map_discovery");
    assert_eq!(discovery["available"], true, "{discovery}");
    let window: Vec<&Value> = probes
        .iter()
        .filter(|probe| probe["site"] == "window")
        .collect();
    assert!(
        window.iter().any(|probe| probe["function"]
            .as_str()
            .unwrap()
            .starts_with("runtime.mapassign")),
        "{window:#?}"
    );
    // Vitals: every one the release has, by symbol or through the runtime's code.
    let vitals = feature("runtime_vitals");
    assert_eq!(vitals["available"], true, "{vitals}");
    let how = if stripped {
        "through the runtime's code"
    } else {
        "by symbol"
    };
    assert!(vitals["detail"].as_str().unwrap().contains(how), "{vitals}");
    let listed = report["vitals"].as_array().unwrap();
    assert_eq!(listed.len(), mapscope::model::vitals::VITALS.len());
    let release = (
        1,
        version.split('.').nth(1).unwrap().parse::<u32>().unwrap(),
    );
    for (entry, vital) in listed.iter().zip(mapscope::model::vitals::VITALS) {
        assert_eq!(entry["metric"], vital.name);
        assert_eq!(entry["series"], vital.prometheus_name());
        assert_eq!(entry["available"], vital.exported_for(release), "{entry}");
    }
    let binary = GoBinary::open(&path, abi::WANTED).unwrap();
    for probe in window {
        let name = probe["function"].as_str().unwrap();
        let function = binary.function(name).unwrap();
        assert_eq!(
            probe["address"].as_u64(),
            Some(binary.frame_site(function)),
            "{name}"
        );
    }
}

#[test]
#[ignore = "needs root and Go toolchains: run `cargo xtask test`"]
fn reports_ordinary_stripped_and_pie_builds() {
    check_report(NEWEST_GO, &[], false, false);
    check_report(NEWEST_GO, &["-ldflags=-s -w"], true, false);
    check_report(NEWEST_GO, &["-buildmode=pie", "-ldflags=-s -w"], true, true);
    check_report("1.21.13", &[], false, false);
}

#[test]
#[ignore = "needs root and Go toolchains: run `cargo xtask test`"]
fn by_pid_matches_by_path() {
    let path = common::build_go("gcload", NEWEST_GO, &[]);
    let target = GoTarget::start(&path, &[]);
    let mut by_pid = inspect_json(&["--pid", &target.pid().to_string()]);
    let mut by_path = inspect_json(&[path.to_str().unwrap()]);
    assert!(
        by_pid["path"]
            .as_str()
            .unwrap()
            .starts_with(&format!("PID {}", target.pid()))
    );
    by_pid["path"] = Value::Null;
    by_path["path"] = Value::Null;
    assert_eq!(by_pid, by_path);

    let text = inspect(&["--pid", &target.pid().to_string()]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("Go version      go1.27.3 (supported)"),
        "{text}"
    );
    assert!(
        text.contains("gc_pause_distributions   available"),
        "{text}"
    );
}

#[test]
#[ignore = "needs root and Go toolchains: run `cargo xtask test`"]
fn too_old_go_is_reported_not_refused() {
    let real = common::build_go("gcload", NEWEST_GO, &[]);
    let old = common::with_build_info_version(&real, "go1.16.3", "gcload-inspect-go1.16");
    let report = inspect_json(&[old.to_str().unwrap()]);
    assert_eq!(report["go_support"], "too_old");
    assert_eq!(report["features"][0]["available"], false);
    assert!(report["probes"].as_array().unwrap().is_empty());
}

/// (A program that is not Go but allocates through a C allocator is reported: tests/native.rs.)
#[test]
fn non_go_corrupt_and_missing_files_are_one_line_errors() {
    let junk = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(junk.path(), b"\x7fELF but not really an ELF file at all").unwrap();
    let no_allocator =
        common::build_fixture("no_allocator.c", "no-allocator", &["-nostdlib", "-static"]);
    for (path, words) in [
        (
            no_allocator.to_str().unwrap(),
            "is not a Go program, and no C allocator found",
        ),
        (junk.path().to_str().unwrap(), "not an ELF executable"),
        ("/nonexistent/mapscope-test", "cannot read"),
    ] {
        let output = inspect(&[path]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(4), "{path}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
        assert!(stderr.contains(words), "{path}: {stderr}");
    }
}

/// The text view's probe table lines up (every address in one column) and names what each
/// probe is for, not the eBPF program; the JSON keeps the program names for machines. With
/// no argument, the usage line shows both ways to name a binary.
#[test]
#[ignore = "needs root and Go toolchains: run `cargo xtask test`"]
fn the_probe_table_lines_up_and_says_what_each_probe_is_for() {
    let path = common::build_go("gcload", "1.21.13", &[]);
    let output = inspect(&[path.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&output.stdout);
    let rows: Vec<&str> = text
        .lines()
        .skip_while(|line| line.trim() != "probe points")
        .skip(1)
        .take_while(|line| line.starts_with("    "))
        .collect();
    assert!(rows.len() >= 5, "{text}");
    let columns: Vec<usize> = rows.iter().map(|row| row.find("0x").unwrap()).collect();
    assert!(
        columns.windows(2).all(|pair| pair[0] == pair[1]),
        "addresses not in one column:\n{text}"
    );
    for purpose in [
        "world stopping",
        "world restarted (pause ends)",
        "sampled allocation",
    ] {
        assert!(
            rows.iter().any(|row| row.trim_start().starts_with(purpose)),
            "{purpose}:\n{text}"
        );
    }
    assert!(!text.contains("stw_start_return"), "{text}");
    let report = inspect_json(&[path.to_str().unwrap()]);
    assert!(
        report["probes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|probe| probe["program"] == "stw_start_return"
                && probe["purpose"] == "world restarted (pause ends)")
    );

    let usage = inspect(&[]);
    let stderr = String::from_utf8_lossy(&usage.stderr);
    assert_eq!(usage.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--pid") && stderr.contains("PATH"),
        "{stderr}"
    );
}
