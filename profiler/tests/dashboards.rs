//! The Grafana dashboards in dashboards/ against real data: a real Prometheus (Debian's package,
//! unpacked by `cargo xtask test`) scrapes a real mapscope attached to real Go targets that
//! produce every metric family (GC pauses, allocations, bucket maps and swiss tables), and every
//! query of every panel of every dashboard, variables substituted as Grafana would, must run
//! through Prometheus's HTTP API and return data. So do the template variables' `label_values`
//! queries. The dashboards' structure is checked too: a Prometheus data source variable that
//! every panel uses, target selector variables used only in regex matchers.
//!
//! `MAPSCOPE_DASHBOARD_SKIP_METRICS=name,name` skips the queries that use those metrics (for
//! developing a dashboard against a mapscope that does not export them yet); the skipped
//! queries are listed in the output.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a failure here is a test failure"
)]

mod common;

use std::{
    collections::{BTreeMap, BTreeSet},
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    time::{Duration, Instant, SystemTime},
};

use common::{GoTarget, Mapscope, NEWEST_GO};
use serde_json::Value;

/// How the test runs mapscope: `false`, one `mapscope attach` per target, each its own scrape
/// target; `true`, one `mapscope daemon` selecting every target by executable name (see
/// `start_daemon`).
const USE_DAEMON: bool = true;

/// Prometheus's scrape interval; the rate windows below are several of it, as Grafana's
/// `$__rate_interval` is (at least four scrape intervals).
const SCRAPE_INTERVAL: &str = "1s";

/// Grafana's built-in variables, as Grafana would expand them for a short time range on a
/// Prometheus scraping every second.
const BUILT_INS: &[(&str, &str)] = &[
    ("__rate_interval", "15s"),
    ("__interval", "5s"),
    ("__interval_ms", "5000"),
    ("__range", "1m"),
    ("__range_s", "60"),
    ("__range_ms", "60000"),
];

/// Labels that select Go targets (mapscope's own) or mapscope instances (Prometheus's).
const SELECTOR_LABELS: &[&str] = &["exe", "pid", "go_version", "job", "instance"];

/// Map snapshots every second, and discovery windows of 300 ms every second, so that every map
/// family has fresh data within a few scrapes.
const MAP_FLAGS: &[&str] = &[
    "--map-snapshot-interval",
    "1s",
    "--map-discovery",
    "300ms/1s",
];

/// Options for every target: the GC pauses dashboard's time-to-stop panel reads
/// `mapscope_stw_stopping_seconds`, which only `--stw-stopping` exports, and the native one's
/// live-heap panels `mapscope_native_inuse_*`, which only `--native-inuse` does (the Go targets,
/// static, have no C allocator for it to cost).
const EVERY_TARGET: &[&str] = &["--stw-stopping", "--native-inuse"];

/// How long the GC and allocation loads run (`-duration`): far longer than the test needs, so
/// the queries run while they still do, whatever the machine's speed (the targets are killed
/// when the test ends).
const LOAD: &str = "300s";

/// How long to let Prometheus scrape the loaded targets before querying.
const SCRAPING: Duration = Duration::from_secs(10);

/// One target: which program, built with which Go (or, for `c:FILE`, from testdata/c with gcc),
/// and mapscope's options for it.
struct Spec {
    /// Start of its executable's name, unique to this test (a daemon selects by name).
    name: &'static str,
    program: &'static str,
    go: &'static str,
    /// What starts its load (the map targets are loaded by `build_maps` and `load` instead).
    start: &'static str,
    args: &'static [&'static str],
    /// Its environment, besides the test's.
    env: &'static [(&'static str, &'static str)],
    mapscope: &'static [&'static str],
}

fn specs() -> Vec<Spec> {
    vec![
        // GC pauses (and allocations).
        Spec {
            name: "dsh-gc",
            program: "gcload",
            go: NEWEST_GO,
            start: "go",
            args: &["-duration", LOAD, "-forced-gcs", "100"],
            // A memory limit, for the Go runtime dashboard's line (far above what it uses).
            env: &[("GOMEMLIMIT", "1GiB")],
            mapscope: &[],
        },
        // Allocation sites and churn (makemap_small, makemap, growslice).
        Spec {
            name: "dsh-al",
            program: "allocsites",
            go: NEWEST_GO,
            start: "go",
            args: &["-duration", LOAD],
            env: &[],
            mapscope: &[],
        },
        // Bucket maps: overflow buckets and chains.
        Spec {
            name: "dsh-m23",
            program: "mapshapes",
            go: "1.23.9",
            start: "",
            args: &[],
            env: &[],
            mapscope: MAP_FLAGS,
        },
        // Swiss tables: tombstones.
        Spec {
            name: "dsh-m27",
            program: "mapshapes",
            go: "1.27.3",
            start: "",
            args: &[],
            env: &[],
            mapscope: MAP_FLAGS,
        },
        // Native allocations (a C program: sizes, sites, a slow leak for the live heap).
        Spec {
            name: "dsh-nat",
            program: "c:sites.c",
            go: "",
            start: "loop 300",
            args: &[],
            env: &[],
            mapscope: &[],
        },
    ]
}

struct Running {
    spec: Spec,
    /// The executable's name: mapscope's `exe` label.
    exe: String,
    process: GoTarget,
}

/// Start mapscope on the targets; returns the running mapscopes (one per target, or one
/// daemon), whose addresses Prometheus scrapes.
fn start_mapscope(targets: &[Running]) -> Vec<Mapscope> {
    if USE_DAEMON {
        vec![start_daemon(targets)]
    } else {
        targets.iter().map(attach).collect()
    }
}

fn attach(target: &Running) -> Mapscope {
    let pid = target.process.pid().to_string();
    let mut args = vec!["attach", "--pid", &pid, "--listen", "127.0.0.1:0"];
    args.extend_from_slice(target.spec.mapscope);
    args.extend_from_slice(EVERY_TARGET);
    Mapscope::start(&args)
}

/// One `mapscope daemon` that selects every target by its executable's name, with the map
/// options of the targets that ask for them; returns once it has attached to all of them.
fn start_daemon(targets: &[Running]) -> Mapscope {
    let selectors: Vec<String> = targets
        .iter()
        .map(|target| format!("exe={}", target.exe))
        .collect();
    let mut args = vec!["daemon", "--listen", "127.0.0.1:0"];
    for selector in &selectors {
        args.extend_from_slice(&["--select", selector]);
    }
    // The daemon applies one set of options to every target: those the targets ask for.
    let mut options: Vec<&str> = Vec::new();
    for target in targets
        .iter()
        .filter(|target| !target.spec.mapscope.is_empty())
    {
        assert!(
            options.is_empty() || options == target.spec.mapscope,
            "targets asking for different mapscope options"
        );
        options = target.spec.mapscope.to_vec();
    }
    args.extend_from_slice(&options);
    args.extend_from_slice(EVERY_TARGET);
    let daemon = Mapscope::start(&args);
    let metrics = daemon.scrape_until(Duration::from_secs(30), |metrics| {
        metrics.sum("mapscope_targets", |_| true) >= targets.len() as f64
    });
    assert_eq!(
        metrics.sum("mapscope_targets", |_| true),
        targets.len() as f64,
        "the daemon should attach to every target; stderr:\n{}",
        daemon.stderr.all()
    );
    daemon
}

#[test]
#[ignore = "needs root and Go toolchains: run `cargo xtask test`"]
fn every_dashboard_query_returns_data() {
    let dashboards = load_dashboards();
    let mut failures = Vec::new();
    for (name, dashboard) in &dashboards {
        check_structure(name, dashboard, &mut failures);
    }

    // Copies named for this test only (at most 15 characters, the kernel's `comm`), so that a
    // daemon selecting them by name finds no other test's targets.
    let copies = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let mut targets: Vec<Running> = specs()
        .into_iter()
        .map(|spec| {
            let exe = format!("{}-{}", spec.name, std::process::id());
            let binary = copies.path().join(&exe);
            let built = match spec.program.strip_prefix("c:") {
                Some(source) => common::build_fixture(
                    source,
                    spec.name,
                    &["-O1", "-g", "-fno-builtin", "-pthread"],
                ),
                None => common::build_go(spec.program, spec.go, &[]),
            };
            std::fs::copy(built, &binary).unwrap();
            let mut command = std::process::Command::new(&binary);
            command.args(spec.args).envs(spec.env.iter().copied());
            let process = GoTarget::spawn(command);
            Running { spec, exe, process }
        })
        .collect();
    let mapscopes = start_mapscope(&targets);
    let addresses: Vec<SocketAddr> = mapscopes.iter().map(|m| m.address).collect();
    let prometheus = Prometheus::start(&addresses);

    // The load: maps built (growths, overflow buckets; tombstones in the swiss "shrunk" map),
    // lookups, assignments and ranges on one of them at steady rates, GC cycles and
    // allocations all along.
    for target in targets
        .iter_mut()
        .filter(|target| target.spec.program == "mapshapes")
    {
        build_maps(&mut target.process);
        target.process.send("load grown 20000 5000 20");
        target
            .process
            .stdout
            .wait_for("the load", Duration::from_secs(30), |line| line == "ok");
    }
    let loaded = Instant::now();
    for target in targets
        .iter_mut()
        .filter(|target| !target.spec.start.is_empty())
    {
        let start = target.spec.start;
        target.process.send(start);
    }
    // Maps built again in the middle of the window: growths and overflow buckets to rate.
    std::thread::sleep(SCRAPING / 2);
    for target in targets
        .iter_mut()
        .filter(|target| target.spec.program == "mapshapes")
    {
        build_maps(&mut target.process);
    }
    std::thread::sleep(
        SCRAPING
            .saturating_sub(loaded.elapsed())
            .max(Duration::from_secs(3)),
    );

    let skipped_metrics: Vec<String> = std::env::var("MAPSCOPE_DASHBOARD_SKIP_METRICS")
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|name| !name.is_empty())
        .map(str::to_owned)
        .collect();
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let mut skipped = Vec::new();
    let mut checked = 0;
    for (name, dashboard) in &dashboards {
        let variables = template_variables(dashboard);
        for variable in dashboard["templating"]["list"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let Some(query) = variable_query(variable) else {
                continue;
            };
            let what = format!(
                "{name}: variable ${}",
                variable["name"].as_str().unwrap_or("?")
            );
            if let Some(metric) = uses_any(&query, &skipped_metrics) {
                skipped.push(format!("{what}: {query} (uses {metric})"));
                continue;
            }
            // A query whose variables cannot be substituted is already a failure.
            let Ok(substituted) = substitute(&query, &variables) else {
                continue;
            };
            checked += 1;
            match label_values(&prometheus, &substituted) {
                Ok(values) => println!("{what}: {} values {values:?}", values.len()),
                Err(reason) => failures.push(format!("{what}\n    {query}\n    {reason}")),
            }
        }
        for panel in panels(dashboard) {
            let title = panel["title"].as_str().unwrap_or("(untitled)");
            for target in panel["targets"].as_array().into_iter().flatten() {
                let Some(expr) = target["expr"].as_str() else {
                    continue;
                };
                let what = format!(
                    "{name}: panel \"{title}\" query {}",
                    target["refId"].as_str().unwrap_or("?")
                );
                if let Some(metric) = uses_any(expr, &skipped_metrics) {
                    skipped.push(format!("{what}: {expr} (uses {metric})"));
                    continue;
                }
                let Ok(substituted) = substitute(expr, &variables) else {
                    continue;
                };
                checked += 1;
                match prometheus.query(&substituted, now) {
                    Ok(summary) => println!("{what}: {summary}"),
                    Err(reason) => failures.push(format!("{what}\n    {expr}\n    {reason}")),
                }
            }
        }
    }
    println!(
        "{checked} queries checked over {:.0?} of load",
        loaded.elapsed()
    );
    if !skipped.is_empty() {
        println!(
            "SKIPPED (MAPSCOPE_DASHBOARD_SKIP_METRICS={}): {} queries\n  {}",
            skipped_metrics.join(","),
            skipped.len(),
            skipped.join("\n  ")
        );
    }
    assert!(
        failures.is_empty(),
        "{} dashboard problems:\n\n{}\n\nPrometheus's warnings and errors:\n{}\n\nmapscope's log:\n{}",
        failures.len(),
        failures.join("\n\n"),
        prometheus.complaints(),
        mapscopes
            .iter()
            .map(|mapscope| mapscope.stderr.all())
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(checked > 0);
    drop(mapscopes);
}

/// mapshapes's "build": every shape built anew (the previous maps become garbage).
fn build_maps(target: &mut GoTarget) {
    target.send("build");
    target
        .stdout
        .wait_for("the map report", Duration::from_secs(120), |line| {
            line.starts_with('{')
        });
}

// --- Dashboards -------------------------------------------------------------------------------

fn dashboards_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../dashboards")
}

/// Every dashboards/*.json, by file name.
fn load_dashboards() -> BTreeMap<String, Value> {
    let dashboards: BTreeMap<String, Value> = std::fs::read_dir(dashboards_dir())
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "json"))
        .map(|path| {
            let text = std::fs::read_to_string(&path).unwrap();
            let json = serde_json::from_str(&text)
                .unwrap_or_else(|error| panic!("{}: {error}", path.display()));
            (path.file_name().unwrap().to_str().unwrap().to_owned(), json)
        })
        .collect();
    for expected in [
        "gc-pauses.json",
        "allocations.json",
        "maps.json",
        "health.json",
        "go-runtime.json",
        "native.json",
    ] {
        assert!(
            dashboards.contains_key(expected),
            "dashboards/{expected} is missing"
        );
    }
    dashboards
}

/// Every panel, those inside rows included; rows themselves are left out.
fn panels(dashboard: &Value) -> Vec<&Value> {
    fn walk<'a>(list: &'a Value, into: &mut Vec<&'a Value>) {
        for panel in list.as_array().into_iter().flatten() {
            if panel["type"] != "row" {
                into.push(panel);
            }
            walk(&panel["panels"], into);
        }
    }
    let mut all = Vec::new();
    walk(&dashboard["panels"], &mut all);
    all
}

/// Names of the template variables that stand for label values (query and custom variables).
fn template_variables(dashboard: &Value) -> Vec<String> {
    dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|variable| matches!(variable["type"].as_str(), Some("query" | "custom")))
        .filter_map(|variable| variable["name"].as_str().map(str::to_owned))
        .collect()
}

/// A query variable's PromQL-ish query (`label_values(...)`), whichever way it is stored.
fn variable_query(variable: &Value) -> Option<String> {
    if variable["type"] != "query" {
        return None;
    }
    let query = &variable["query"];
    query
        .as_str()
        .or_else(|| query["query"].as_str())
        .or_else(|| variable["definition"].as_str())
        .map(str::to_owned)
}

fn is_datasource_reference(value: &Value, variable: &str) -> bool {
    let names = [format!("${variable}"), format!("${{{variable}}}")];
    match value {
        Value::String(text) => names.contains(text),
        Value::Object(object) => {
            object.get("type").and_then(Value::as_str) == Some("prometheus")
                && object
                    .get("uid")
                    .and_then(Value::as_str)
                    .is_some_and(|uid| names.iter().any(|name| name == uid))
        }
        _ => false,
    }
}

/// A data source variable that every panel and query uses; target selectors; each template
/// variable used, and only in regex matchers; unique panel ids.
fn check_structure(name: &str, dashboard: &Value, failures: &mut Vec<String>) {
    let mut fail = |message: String| failures.push(format!("{name}: {message}"));
    if dashboard["uid"].as_str().is_none_or(str::is_empty) || dashboard["title"].as_str().is_none()
    {
        fail("no uid or title".to_owned());
    }
    let list = dashboard["templating"]["list"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let datasource = list
        .iter()
        .find(|variable| variable["type"] == "datasource" && variable["query"] == "prometheus");
    let Some(datasource) = datasource.and_then(|variable| variable["name"].as_str()) else {
        fail("no data source variable (type \"datasource\", query \"prometheus\")".to_owned());
        return;
    };
    let variables = template_variables(dashboard);
    let mut expressions: Vec<String> = Vec::new();
    for variable in &list {
        let Some(query) = variable_query(variable) else {
            continue;
        };
        let variable_name = variable["name"].as_str().unwrap_or("?");
        if !is_datasource_reference(&variable["datasource"], datasource) {
            fail(format!(
                "variable ${variable_name}'s data source is {}, not ${datasource}",
                variable["datasource"]
            ));
        }
        if let Err(reason) = substitute(&query, &variables) {
            fail(format!("variable ${variable_name}: {query}: {reason}"));
        }
        expressions.push(query);
    }
    let selectors: Vec<&Value> = list
        .iter()
        .filter(|variable| {
            variable_query(variable).is_some_and(|query| {
                parse_label_values(&query)
                    .is_ok_and(|(_, label)| SELECTOR_LABELS.contains(&label.as_str()))
            })
        })
        .collect();
    if selectors.is_empty() {
        fail(format!(
            "no target selector variable (label_values of one of {SELECTOR_LABELS:?})"
        ));
    }
    let mut ids = BTreeSet::new();
    for panel in panels(dashboard) {
        let title = panel["title"].as_str().unwrap_or("(untitled)");
        if !ids.insert(panel["id"].to_string()) {
            fail(format!("panel \"{title}\": id {} used twice", panel["id"]));
        }
        if panel["type"] == "text" {
            continue;
        }
        if !is_datasource_reference(&panel["datasource"], datasource) {
            fail(format!(
                "panel \"{title}\": data source is {}, not ${datasource}",
                panel["datasource"]
            ));
        }
        let targets = panel["targets"].as_array().cloned().unwrap_or_default();
        if targets.is_empty() {
            fail(format!("panel \"{title}\": no queries"));
        }
        for target in targets {
            if !target["datasource"].is_null()
                && !is_datasource_reference(&target["datasource"], datasource)
            {
                fail(format!(
                    "panel \"{title}\" query {}: data source is {}, not ${datasource}",
                    target["refId"], target["datasource"]
                ));
            }
            let Some(expr) = target["expr"].as_str() else {
                fail(format!(
                    "panel \"{title}\" query {}: no expr",
                    target["refId"]
                ));
                continue;
            };
            if let Err(reason) = substitute(expr, &variables) {
                fail(format!("panel \"{title}\": {expr}: {reason}"));
            }
            expressions.push(expr.to_owned());
        }
        if let Some(repeat) = panel["repeat"].as_str()
            && !variables.iter().any(|variable| variable == repeat)
        {
            fail(format!("panel \"{title}\" repeats over unknown ${repeat}"));
        }
    }
    for variable in &variables {
        let used = expressions.iter().any(|expr| {
            references(expr)
                .into_iter()
                .any(|reference| reference.name == *variable)
        });
        if !used {
            fail(format!("variable ${variable} is not used by any query"));
        }
    }
}

/// A `$name`, `${name}`, `${name:format}` or `[[name]]` in a query, at `start..end`.
struct Reference {
    start: usize,
    end: usize,
    name: String,
}

fn references(expr: &str) -> Vec<Reference> {
    let bytes = expr.as_bytes();
    let is_name = |byte: u8| byte.is_ascii_alphanumeric() || byte == b'_';
    let mut found = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let start = at;
        if bytes[at] == b'$' && bytes.get(at + 1) == Some(&b'{') {
            let Some(close) = expr[at..].find('}') else {
                break;
            };
            let inside = &expr[at + 2..at + close];
            let name = inside.split(':').next().unwrap_or_default().to_owned();
            at += close + 1;
            found.push(Reference {
                start,
                end: at,
                name,
            });
        } else if bytes[at] == b'$' {
            let length = bytes[at + 1..].iter().take_while(|&&b| is_name(b)).count();
            at += 1 + length;
            if length > 0 {
                found.push(Reference {
                    start,
                    end: at,
                    name: expr[start + 1..at].to_owned(),
                });
            }
        } else if expr[at..].starts_with("[[") {
            let Some(close) = expr[at..].find("]]") else {
                break;
            };
            let name = expr[at + 2..at + close]
                .split(':')
                .next()
                .unwrap_or_default()
                .to_owned();
            at += close + 2;
            found.push(Reference {
                start,
                end: at,
                name,
            });
        } else {
            at += 1;
        }
    }
    found
}

/// The query as Prometheus gets it from Grafana with every variable at "All" (`.*`) and a short
/// time range. A template variable must sit in a regex matcher (`=~"$var"`, `!~`): with several
/// values selected, or "All", Grafana expands it to a regex.
fn substitute(expr: &str, variables: &[String]) -> Result<String, String> {
    let mut out = String::new();
    let mut last = 0;
    for reference in references(expr) {
        out.push_str(&expr[last..reference.start]);
        last = reference.end;
        if let Some((_, value)) = BUILT_INS.iter().find(|(name, _)| *name == reference.name) {
            out.push_str(value);
            continue;
        }
        if reference.name.starts_with(|c: char| c.is_ascii_digit()) {
            // A regex capture group (label_replace's "$1"), which Grafana leaves alone.
            out.push_str(&expr[reference.start..reference.end]);
            continue;
        }
        if !variables.contains(&reference.name) {
            return Err(format!("unknown variable ${}", reference.name));
        }
        // The matcher this value is in: the operator before the opening quote.
        let before = &expr[..reference.start];
        let in_string = before.matches('"').count() % 2 == 1;
        let operator = before
            .rfind('"')
            .map(|quote| before[..quote].trim_end())
            .filter(|_| in_string);
        match operator {
            Some(op) if op.ends_with("=~") || op.ends_with("!~") => out.push_str(".*"),
            Some(op) if op.ends_with('=') => {
                return Err(format!(
                    "${} is used with `{}`: a multi-value or \"All\" selection needs `=~`",
                    reference.name,
                    if op.ends_with("!=") { "!=" } else { "=" }
                ));
            }
            _ => {
                return Err(format!(
                    "${} is not the value of a label matcher",
                    reference.name
                ));
            }
        }
    }
    out.push_str(&expr[last..]);
    Ok(out)
}

/// The metric of `names` that `expr` uses, if any (a histogram's name covers its `_bucket`,
/// `_sum` and `_count` series).
fn uses_any(expr: &str, names: &[String]) -> Option<String> {
    let is_name = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    names
        .iter()
        .find(|name| {
            expr.match_indices(name.as_str()).any(|(at, _)| {
                let before_ok = !expr[..at].chars().next_back().is_some_and(is_name);
                let rest = &expr[at + name.len()..];
                let rest = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|suffix| rest.strip_prefix(suffix))
                    .unwrap_or(rest);
                before_ok && !rest.chars().next().is_some_and(is_name)
            })
        })
        .cloned()
}

/// `label_values(selector, label)` or `label_values(label)`: (selector, label).
fn parse_label_values(query: &str) -> Result<(Option<String>, String), String> {
    let inner = query
        .trim()
        .strip_prefix("label_values(")
        .and_then(|rest| rest.strip_suffix(')'))
        .ok_or_else(|| format!("not a label_values(...) query: {query}"))?;
    // The last comma outside braces and quotes separates the selector from the label.
    let (mut depth, mut quoted, mut split) = (0, false, None);
    for (at, c) in inner.char_indices() {
        match c {
            '"' => quoted = !quoted,
            '{' | '(' if !quoted => depth += 1,
            '}' | ')' if !quoted => depth -= 1,
            ',' if !quoted && depth == 0 => split = Some(at),
            _ => {}
        }
    }
    Ok(match split {
        Some(at) => (
            Some(inner[..at].trim().to_owned()),
            inner[at + 1..].trim().to_owned(),
        ),
        None => (None, inner.trim().to_owned()),
    })
}

fn label_values(prometheus: &Prometheus, query: &str) -> Result<Vec<String>, String> {
    let (selector, label) = parse_label_values(query)?;
    let mut path = format!("/api/v1/label/{label}/values");
    if let Some(selector) = selector {
        path.push_str(&format!("?match[]={}", encode(&selector)));
    }
    let data = prometheus.api(&path)?;
    let values: Vec<String> = data
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|value| value.as_str().map(str::to_owned))
        .collect();
    if values.is_empty() {
        return Err("no values".to_owned());
    }
    Ok(values)
}

// --- Prometheus -------------------------------------------------------------------------------

/// A Prometheus scraping mapscope every second, killed when dropped.
struct Prometheus {
    server: common::PrometheusServer,
}

impl Prometheus {
    /// Start it scraping `targets`, and return once every target is up.
    fn start(targets: &[SocketAddr]) -> Self {
        let list: Vec<String> = targets.iter().map(|target| format!("'{target}'")).collect();
        let prometheus = Self {
            server: common::PrometheusServer::start(&format!(
                "global:\n  scrape_interval: {SCRAPE_INTERVAL}\n  scrape_timeout: {SCRAPE_INTERVAL}\n  evaluation_interval: {SCRAPE_INTERVAL}\nscrape_configs:\n  - job_name: mapscope\n    static_configs:\n      - targets: [{}]\n",
                list.join(", ")
            )),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let active = prometheus
                .api("/api/v1/targets?state=active")
                .expect("/api/v1/targets");
            let active = active["activeTargets"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            if active.len() == targets.len() && active.iter().all(|t| t["health"] == "up") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "Prometheus's targets are not all up: {active:#?}"
            );
            std::thread::sleep(Duration::from_millis(250));
        }
        prometheus
    }

    /// Prometheus's warnings and errors, for a failure message.
    fn complaints(&self) -> String {
        let lines: Vec<String> = self
            .server
            .log
            .all()
            .lines()
            .filter(|line| line.contains("level=warn") || line.contains("level=error"))
            .map(str::to_owned)
            .collect();
        if lines.is_empty() {
            "(none)".to_owned()
        } else {
            lines.join("\n")
        }
    }

    /// A GET of the HTTP API: its `data`, or why not.
    fn api(&self, path: &str) -> Result<Value, String> {
        let (status, body) = get(self.server.address, path)?;
        let json: Value = serde_json::from_str(&body)
            .map_err(|error| format!("HTTP {status}, not JSON ({error}): {body}"))?;
        if json["status"] != "success" {
            return Err(format!(
                "HTTP {status}, status {}: {} {}",
                json["status"], json["errorType"], json["error"]
            ));
        }
        Ok(json["data"].clone())
    }

    /// An instant query at `time`: a summary of its result, or why it shows nothing.
    fn query(&self, expr: &str, time: f64) -> Result<String, String> {
        let data = self.api(&format!(
            "/api/v1/query?query={}&time={time:.3}",
            encode(expr)
        ))?;
        let result = &data["result"];
        match data["resultType"].as_str() {
            Some("vector" | "matrix") => {
                let series = result.as_array().cloned().unwrap_or_default();
                if series.is_empty() {
                    return Err("no data".to_owned());
                }
                let values: Vec<&str> = series
                    .iter()
                    .filter_map(|one| one["value"][1].as_str())
                    .collect();
                if !values.is_empty() && values.iter().all(|value| *value == "NaN") {
                    return Err(format!("{} series, every value NaN", series.len()));
                }
                let shown: Vec<String> = series
                    .iter()
                    .take(3)
                    .map(|one| format!("{} = {}", one["metric"], one["value"][1]))
                    .collect();
                let zero = values.iter().all(|value| value.parse() == Ok(0.0));
                Ok(format!(
                    "{} series{}, e.g. {}",
                    series.len(),
                    if zero { " (all zero)" } else { "" },
                    shown.join("; ")
                ))
            }
            _ => Ok(format!("{data}")),
        }
    }
}

/// Percent-encoding for a URL's query string.
fn encode(text: &str) -> String {
    text.bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (byte as char).to_string()
            }
            _ => format!("%{byte:02X}"),
        })
        .collect()
}

/// A GET whatever its status (Prometheus answers errors as JSON with 400 or 422).
fn get(address: SocketAddr, path: &str) -> Result<(u16, String), String> {
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(5))
        .map_err(|error| format!("connecting to {address}: {error}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n").unwrap();
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .map_err(|error| format!("reading from {address}: {error}"))?;
    let response = String::from_utf8_lossy(&response);
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("not an HTTP response: {response}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("no status in {head}"))?;
    Ok((status, body.to_owned()))
}

#[test]
fn variables_are_substituted_in_regex_matchers_only() {
    let variables = vec!["exe".to_owned(), "pid".to_owned()];
    assert_eq!(
        substitute(
            "rate(x{exe=~\"$exe\", pid=~\"${pid}\"}[$__rate_interval])",
            &variables
        )
        .unwrap(),
        "rate(x{exe=~\".*\", pid=~\".*\"}[15s])"
    );
    assert!(substitute("x{exe=\"$exe\"}", &variables).is_err());
    assert!(substitute("x{exe!=\"$exe\"}", &variables).is_err());
    assert!(substitute("x{exe=~\"$other\"}", &variables).is_err());
    assert!(substitute("topk($exe, x)", &variables).is_err());
    assert_eq!(
        substitute(
            "label_replace(x, \"a\", \"$1\", \"b\", \"(.*)\")",
            &variables
        )
        .unwrap(),
        "label_replace(x, \"a\", \"$1\", \"b\", \"(.*)\")"
    );
    assert_eq!(
        parse_label_values("label_values(m{exe=~\"$exe\",a=\"b,c\"}, pid)").unwrap(),
        (
            Some("m{exe=~\"$exe\",a=\"b,c\"}".to_owned()),
            "pid".to_owned()
        )
    );
    let names = vec!["mapscope_targets".to_owned(), "mapscope_x".to_owned()];
    assert_eq!(
        uses_any("sum(mapscope_targets)", &names).as_deref(),
        Some("mapscope_targets")
    );
    assert_eq!(uses_any("sum(mapscope_targets_other)", &names), None);
    assert_eq!(
        uses_any("rate(mapscope_x_bucket[1m])", &names).as_deref(),
        Some("mapscope_x")
    );
}

/// The dashboards' structure, without Prometheus: runs with plain `cargo test`.
#[test]
fn dashboards_are_well_formed() {
    let mut failures = Vec::new();
    let dashboards = load_dashboards();
    let mut uids = BTreeSet::new();
    for (name, dashboard) in &dashboards {
        check_structure(name, dashboard, &mut failures);
        if !uids.insert(dashboard["uid"].to_string()) {
            failures.push(format!("{name}: uid {} used twice", dashboard["uid"]));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
