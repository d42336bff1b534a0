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
use mapscope::model::vitals::VITALS;

/// Set from the test, so a value read from the wrong place, or a default, cannot pass.
const GOGC: &str = "137";
const GOMEMLIMIT: &str = "3000000123";
const GOMAXPROCS: &str = "3";

#[derive(Debug, serde::Deserialize)]
struct RuntimeView {
    metrics: std::collections::BTreeMap<String, f64>,
    num_gc: u32,
    num_forced_gc: u32,
    gomaxprocs: u32,
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
/// the release must equal the runtime's value exactly; on Go 1.19, whose runtime/metrics lacks
/// some, the same fields through the public API (MemStats' GC counts, `GOMAXPROCS(0)`) or the
/// settings the test gave (GOGC, GOMEMLIMIT). Vitals the release lacks must be absent.
fn vitals_match_the_runtime(version: &str) {
    let release: (u32, u32) = {
        let mut parts = version.split('.').map(|part| part.parse::<u32>().unwrap());
        (parts.next().unwrap(), parts.next().unwrap())
    };
    for flags in [
        &[][..],
        &["-buildmode=pie"][..],
        &["-ldflags=-s -w"][..],
        &["-buildmode=pie", "-ldflags=-s -w"][..],
    ] {
        let binary = common::build_go("gcload", version, flags);
        let mut command = std::process::Command::new(&binary);
        command
            .args(["-duration", "500ms", "-forced-gcs", "3"])
            .env("GOGC", GOGC)
            .env("GOMEMLIMIT", GOMEMLIMIT)
            .env("GOMAXPROCS", GOMAXPROCS);
        let mut target = GoTarget::spawn(command);
        let mapscope = Mapscope::attach(target.pid());
        target.run_load();
        // The first answer allocates; after it the target is quiet.
        target.vitals();
        std::thread::sleep(Duration::from_millis(1200));
        let metrics = mapscope.scrape();
        let runtime = target.vitals();
        let mut compared = 0;
        for vital in VITALS {
            let name = vital.prometheus_name();
            if !vital.exported_for(release) {
                assert!(
                    !metrics.has(&name),
                    "Go {version} {flags:?}: {name} exported, but its runtime lacks it"
                );
                continue;
            }
            assert!(
                metrics.has(&name),
                "Go {version} {flags:?}: {name} missing; mapscope's log:\n{}",
                mapscope.stderr.all()
            );
            let ours = metrics.sum(&name, |_| true);
            let theirs = match runtime.metrics.get(vital.name) {
                Some(&value) => value,
                None => {
                    assert!(release < vital.since, "Go {version}: no {}", vital.name);
                    match vital.name {
                        "/gc/gogc:percent" => GOGC.parse().unwrap(),
                        "/gc/gomemlimit:bytes" => GOMEMLIMIT.parse().unwrap(),
                        "/sched/gomaxprocs:threads" => f64::from(runtime.gomaxprocs),
                        other => panic!("Go {version}: no runtime view of {other}"),
                    }
                }
            };
            assert_eq!(ours, theirs, "Go {version} {flags:?}: {name}");
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
        println!("Go {version} {flags:?}: {compared} vitals equal the runtime's");
        target.send("exit");
    }
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
        target.vitals();
        std::thread::sleep(Duration::from_millis(1200));
        let metrics = mapscope.scrape();
        let runtime = target.vitals();
        let log = mapscope.stderr.all();
        let exported: Vec<&str> = VITALS
            .iter()
            .map(|vital| vital.name)
            .filter(|name| {
                metrics.has(
                    &VITALS
                        .iter()
                        .find(|vital| vital.name == *name)
                        .unwrap()
                        .prometheus_name(),
                )
            })
            .collect();
        if confirmed {
            assert_eq!(exported.len(), VITALS.len(), "{log}");
            for vital in VITALS {
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
