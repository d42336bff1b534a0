//! Native allocators found, not assumed: `mapscope inspect` names the C allocator a program
//! or process allocates through (glibc's in libc.so.6 or linked statically; jemalloc, tcmalloc
//! and mimalloc from Debian's packages, preloaded) and its entry points, checked against
//! binutils' `nm` on the same files; a cgo Go program gets its Go report and its allocator.
//! `mapscope attach` counts every call the program makes into its allocator, compared with
//! the program's own counts: exactly with the probes on all the time, within the bound of
//! scaling when the budget holds them.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a failure here is a test failure"
)]

mod common;

use std::{
    collections::HashMap,
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use common::{ChildGuard, Mapscope, NEWEST_GO, inspect_json};
use serde_json::Value;

const STANDARD: &[&str] = &["malloc", "calloc", "realloc", "free", "posix_memalign"];

/// The defined function symbols of `path` by name (version suffixes dropped), as `nm` reads
/// them: the dynamic table of a library, the static one of an executable.
fn nm(path: &Path, dynamic: bool) -> HashMap<String, u64> {
    let mut command = Command::new("nm");
    if dynamic {
        command.arg("-D");
    }
    let output = command.arg("--defined-only").arg(path).output().unwrap();
    assert!(output.status.success(), "nm {}", path.display());
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let address = u64::from_str_radix(fields.next()?, 16).ok()?;
            let kind = fields.next()?;
            let name = fields.next()?.split('@').next()?;
            ["T", "W", "i"]
                .contains(&kind)
                .then(|| (name.to_owned(), address))
        })
        .collect()
}

/// The one allocator in a report, checked to be `kind` in `object`, every standard entry
/// point at `nm`'s address.
fn check_allocator(report: &Value, kind: &str, object: &Path, in_executable: bool) -> Value {
    let allocators = report["native_allocators"].as_array().unwrap();
    assert_eq!(allocators.len(), 1, "{report:#}");
    let allocator = allocators[0].clone();
    assert_eq!(allocator["kind"], kind, "{allocator:#}");
    assert_eq!(allocator["provides_malloc"], true);
    assert_eq!(allocator["in_executable"], in_executable);
    let named = PathBuf::from(allocator["object"].as_str().unwrap());
    assert_eq!(
        named.canonicalize().unwrap(),
        object.canonicalize().unwrap(),
        "{allocator:#}"
    );
    let symbols = nm(object, !in_executable);
    let entries: HashMap<&str, u64> = allocator["entry_points"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|entry| {
            let address = entry["address"].as_u64().unwrap();
            std::iter::once(entry["function"].as_str().unwrap())
                .chain(
                    entry["aliases"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|alias| alias.as_str().unwrap()),
                )
                .map(move |name| (name, address))
        })
        .collect();
    for name in STANDARD {
        assert_eq!(
            entries.get(name),
            symbols.get(*name),
            "{name} in {}: {allocator:#}",
            object.display()
        );
    }
    allocator
}

/// Where the dynamic linker finds `library` on this machine.
fn system_library(library: &str) -> PathBuf {
    [
        "/usr/lib/x86_64-linux-gnu",
        "/lib/x86_64-linux-gnu",
        "/usr/lib64",
    ]
    .iter()
    .map(|folder| Path::new(folder).join(library))
    .find(|path| path.exists())
    .unwrap_or_else(|| panic!("{library} not installed: run `cargo xtask test`"))
}

/// A dynamically linked C program allocates through glibc's libc.so.6: found from the file
/// (through its needed libraries) and from the running process (through its mappings).
#[test]
#[ignore = "needs gcc and binutils: run `cargo xtask test`"]
fn a_dynamic_c_program_allocates_through_the_c_library() {
    let binary = common::build_fixture("waiter.c", "waiter", &["-O1"]);
    let libc = system_library("libc.so.6");
    let report = inspect_json(&[binary.to_str().unwrap()]);
    assert_eq!(report["go_version"], Value::Null);
    check_allocator(&report, "glibc", &libc, false);
    let features = report["features"].as_array().unwrap();
    assert_eq!(features[0]["name"], "native_allocations", "{report:#}");

    let waiter = Fixture::start(&binary, None);
    let report = inspect_json(&["--pid", &waiter.pid().to_string()]);
    check_allocator(&report, "glibc", &libc, false);
}

/// A statically linked C program carries glibc's allocator in the executable itself.
#[test]
#[ignore = "needs gcc and binutils: run `cargo xtask test`"]
fn a_static_c_program_carries_its_allocator() {
    let binary = common::build_fixture("waiter.c", "waiter-static", &["-O1", "-static"]);
    let report = inspect_json(&[binary.to_str().unwrap()]);
    check_allocator(&report, "glibc", &binary, true);
    let waiter = Fixture::start(&binary, None);
    let report = inspect_json(&["--pid", &waiter.pid().to_string()]);
    check_allocator(&report, "glibc", &binary, true);
}

/// jemalloc, tcmalloc and mimalloc replace malloc (here preloaded, as servers often deploy
/// them): each is found by its own symbols, named as the allocator behind malloc instead of
/// glibc's, with its own calls beside the standard ones (jemalloc's `*allocx`, the C++
/// operators tcmalloc and mimalloc define).
#[test]
#[ignore = "needs Debian's allocator packages: run `cargo xtask test`"]
fn replacement_allocators_are_found_by_their_own_symbols() {
    let binary = common::build_fixture("waiter.c", "waiter", &["-O1"]);
    for (library, kind, own) in [
        ("libjemalloc.so.2", "jemalloc", &["mallocx", "sdallocx"][..]),
        ("libtcmalloc_minimal.so.4", "tcmalloc", &["_Znwm"][..]),
        ("libmimalloc.so.2", "mimalloc", &["_Znwm"][..]),
    ] {
        let library = system_library(library);
        let waiter = Fixture::start(&binary, Some(&library));
        let report = inspect_json(&["--pid", &waiter.pid().to_string()]);
        let allocator = check_allocator(&report, kind, &library, false);
        let symbols = nm(&library, true);
        for name in own {
            let entry = allocator["entry_points"]
                .as_array()
                .unwrap()
                .iter()
                .find(|entry| entry["function"] == *name)
                .unwrap_or_else(|| panic!("no {name}: {allocator:#}"));
            assert_eq!(entry["address"].as_u64(), symbols.get(*name).copied());
        }
    }
}

/// A Go program with cgo gets its Go report and its C allocator; a pure Go one has none.
#[test]
#[ignore = "needs root and Go toolchains: run `cargo xtask test`"]
fn a_cgo_go_program_reports_go_and_its_allocator() {
    let cgo = common::build_go("gcload", NEWEST_GO, &["-tags=mapscope_cgo"]);
    let report = inspect_json(&[cgo.to_str().unwrap()]);
    assert!(report["go_version"].as_str().unwrap().starts_with("go1."));
    check_allocator(&report, "glibc", &system_library("libc.so.6"), false);
    let pure = common::build_go("gcload", NEWEST_GO, &[]);
    let report = inspect_json(&[pure.to_str().unwrap()]);
    assert_eq!(report["native_allocators"], serde_json::json!([]));
    let native = report["features"]
        .as_array()
        .unwrap()
        .iter()
        .find(|feature| feature["name"] == "native_allocations")
        .unwrap();
    assert!(
        native["detail"]
            .as_str()
            .unwrap()
            .contains("no C allocator"),
        "{native}"
    );
}

/// What `allocs.c` says it asked for in one run.
#[derive(Debug, serde::Deserialize)]
struct AskedFor {
    objects: u64,
    bytes: u64,
    frees: u64,
}

/// A C fixture (testdata/c), started with `preload` as its allocator, once it has said
/// "ready"; it runs until its standard input closes (when this is dropped), taking commands
/// meanwhile.
struct Fixture {
    guard: ChildGuard,
    stdin: std::process::ChildStdin,
    stdout: BufReader<std::process::ChildStdout>,
}

impl Fixture {
    fn start(binary: &Path, preload: Option<&Path>) -> Self {
        Self::start_with(binary, &[], preload)
    }

    fn start_with(binary: &Path, args: &[&str], preload: Option<&Path>) -> Self {
        let mut command = Command::new(binary);
        command
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        if let Some(library) = preload {
            command.env("LD_PRELOAD", library);
        }
        let mut child = command.spawn().unwrap();
        let stdin = child.stdin.take().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "ready");
        Self {
            guard: ChildGuard(child),
            stdin,
            stdout,
        }
    }

    fn pid(&self) -> u32 {
        self.guard.0.id()
    }

    /// Send `command` and read its one-line JSON answer.
    fn command<T: serde::de::DeserializeOwned>(&mut self, command: &str) -> T {
        use std::io::Write as _;
        writeln!(self.stdin, "{command}").unwrap();
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        serde_json::from_str(line.trim()).unwrap()
    }
}

fn build_allocs() -> PathBuf {
    common::build_fixture("allocs.c", "allocs", &["-O1", "-fno-builtin", "-pthread"])
}

/// mapscope's native totals for `pid`'s allocator `allocator`: objects, bytes, frees, and
/// the size histogram's count and sum.
fn native_totals(metrics: &common::Metrics, pid: u32, allocator: &str) -> [f64; 5] {
    let ours = |labels: &std::collections::BTreeMap<String, String>| {
        labels.get("pid").map(String::as_str) == Some(&pid.to_string())
            && labels.get("allocator").map(String::as_str) == Some(allocator)
    };
    [
        "mapscope_native_alloc_objects_total",
        "mapscope_native_alloc_bytes_total",
        "mapscope_native_free_objects_total",
        "mapscope_native_alloc_size_bytes_count",
        "mapscope_native_alloc_size_bytes_sum",
    ]
    .map(|name| metrics.sum(name, ours))
}

/// The native totals once they stopped moving (the program waits for a command): the
/// collector reads the kernel's counts once a second, so a scrape may show a read from before
/// the program's last calls.
fn settled_totals(mapscope: &Mapscope, pid: u32, allocator: &str) -> [f64; 5] {
    let mut last = native_totals(&mapscope.scrape(), pid, allocator);
    for _ in 0..10 {
        std::thread::sleep(Duration::from_millis(1200));
        let now = native_totals(&mapscope.scrape(), pid, allocator);
        if now == last {
            return now;
        }
        last = now;
    }
    panic!("{allocator}: the native counts of an idle program kept moving: {last:?}");
}

/// Every call the program makes into its allocator is counted once, exactly, and none the
/// allocator makes to itself (glibc's `realloc(NULL, n)` jumps to `malloc`; jemalloc's and
/// tcmalloc's entry points call one another): `allocs.c` calls every standard entry point
/// from two threads and counts what it asked for, under glibc and under each preloaded
/// allocator, and built statically (glibc's allocator in the executable itself), with
/// `mapscope attach` counting every call (`--max-overhead 0`), and the metrics must say
/// exactly that, each under its allocator's label.
#[test]
#[ignore = "needs root, gcc and Debian's allocators: run `cargo xtask test`"]
fn every_call_the_program_makes_is_counted_once() {
    let binary = build_allocs();
    let static_binary = common::build_fixture(
        "allocs.c",
        "allocs-static",
        &["-O1", "-fno-builtin", "-pthread", "-static"],
    );
    let mut wrong = Vec::new();
    for (binary, preload, allocator) in [
        (&binary, None, "glibc"),
        (&binary, Some("libjemalloc.so.2"), "jemalloc"),
        (&binary, Some("libtcmalloc_minimal.so.4"), "tcmalloc"),
        (&binary, Some("libmimalloc.so.2"), "mimalloc"),
        (&static_binary, None, "glibc"),
    ] {
        let library = preload.map(system_library);
        let mut allocs = Fixture::start(binary, library.as_deref());
        let pid = allocs.pid();
        let mapscope = Mapscope::attach_unbudgeted(pid);
        mapscope.scrape_until(Duration::from_secs(10), |metrics| {
            metrics.has("mapscope_native_alloc_objects_total")
        });
        let before = settled_totals(&mapscope, pid, allocator);
        for round in 0..2 {
            let asked: AskedFor = allocs.command("go");
            let asked = [asked.objects, asked.bytes, asked.frees].map(|n| n as f64);
            let expected = [
                before[0] + asked[0] * f64::from(round + 1),
                before[1] + asked[1] * f64::from(round + 1),
                before[2] + asked[2] * f64::from(round + 1),
            ];
            let after = native_totals(
                &mapscope.scrape_until(Duration::from_secs(10), |metrics| {
                    native_totals(metrics, pid, allocator)[..3] == expected
                }),
                pid,
                allocator,
            );
            println!("{allocator}: round {round}: mapscope {after:?}, expected {expected:?}");
            if after[..3] != expected {
                wrong.push(format!(
                    "{allocator}: counted {after:?}, expected {expected:?}"
                ));
            }
            // The size histogram holds every allocation, its sum every byte.
            assert_eq!(after[3], after[0], "{allocator}: histogram count");
            assert_eq!(after[4], after[1], "{allocator}: histogram sum");
        }
        let coverage = mapscope
            .scrape()
            .sum("mapscope_native_coverage_ratio", |labels| {
                labels.get("pid").map(String::as_str) == Some(&pid.to_string())
            });
        assert_eq!(coverage, 1.0, "{allocator}: counted all the time");
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}

/// A Rust program counts exactly as a C one: its global allocator (the system's, as every
/// Rust program's by default) reaches glibc's `malloc`, `calloc`, `realloc` and `free`, and
/// `testdata/rust/allocs.rs` wraps it to count what the program asks for, from two threads
/// (boxes, growing vectors, formatted strings, zeroed buffers, a hash map). Its sites are the
/// allocator's direct callers: the program's own functions where the standard library's
/// allocating code is inlined into them.
#[test]
#[ignore = "needs root and rustc: run `cargo xtask test`"]
fn a_rust_program_is_counted_exactly() {
    let binary =
        common::build_fixture("allocs.rs", "allocs-rs", &["-O", "-g", "--edition", "2024"]);
    let mut program = Fixture::start(&binary, None);
    let pid = program.pid();
    let mapscope = Mapscope::attach_unbudgeted(pid);
    mapscope.scrape_until(Duration::from_secs(10), |metrics| {
        metrics.has("mapscope_native_alloc_objects_total")
    });
    let before = settled_totals(&mapscope, pid, "glibc");
    let mut asked = [0.0; 3];
    for round in 1..=2 {
        let this: AskedFor = program.command("go");
        for (total, n) in asked.iter_mut().zip([this.objects, this.bytes, this.frees]) {
            *total += n as f64;
        }
        let expected = [
            before[0] + asked[0],
            before[1] + asked[1],
            before[2] + asked[2],
        ];
        let counted = native_totals(
            &mapscope.scrape_until(Duration::from_secs(10), |metrics| {
                native_totals(metrics, pid, "glibc")[..3] == expected
            }),
            pid,
            "glibc",
        );
        println!("Rust, round {round}: mapscope {counted:?}, the program {expected:?}");
        assert_eq!(
            counted[..3],
            expected,
            "round {round}: objects, bytes, frees"
        );
    }
    let sites = site_bytes(&mapscope.scrape(), pid);
    assert!(
        sites.keys().any(|site| site.starts_with("allocs::work")),
        "the program's own function is no site: {sites:?}"
    );
}

/// What `plugin.c` says of its library after loading or unloading it.
#[derive(Debug, serde::Deserialize)]
struct Mapped {
    mapped: bool,
}

/// An allocator library a program loads after mapscope attached (`dlopen`, as a plugin
/// linked with mimalloc is loaded) is found within seconds and counted under its own label,
/// exactly, with the probes on all the time; once the program unloads it (`dlclose`), its
/// probes are removed, none left behind (mapscope's probe handles back to what they were);
/// loaded again, it is probed again and its counts go on. Under the default budget the
/// governor holds the library's probes with the rest of the family: counted there too, and
/// none left behind either.
#[test]
#[ignore = "needs root, gcc and Debian's mimalloc: run `cargo xtask test`"]
fn an_allocator_library_loaded_later_is_counted_and_its_probes_go_when_it_is_unloaded() {
    let binary = common::build_fixture("plugin.c", "plugin", &["-O1"]);
    let library = system_library("libmimalloc.so.2");
    let args = [library.to_str().unwrap(), "mi_malloc", "mi_free"];
    let mimalloc_series = |metrics: &common::Metrics, pid: u32| {
        metrics.0.iter().any(|sample| {
            sample.name == "mapscope_native_alloc_objects_total"
                && sample.labels.get("pid") == Some(&pid.to_string())
                && sample.labels.get("allocator").map(String::as_str) == Some("mimalloc")
        })
    };
    // The handles of the probes on glibc alone, on all the time: what every pass must come
    // back to once the library is unloaded.
    let mut glibc_only = None;
    for budgeted in [false, true] {
        let mut plugin = Fixture::start_with(&binary, &args, None);
        let pid = plugin.pid();
        let mapscope = if budgeted {
            Mapscope::attach(pid)
        } else {
            Mapscope::attach_unbudgeted(pid)
        };
        let own = mapscope.guard.0.id();
        mapscope.scrape_until(Duration::from_secs(10), |metrics| {
            metrics.has("mapscope_native_alloc_objects_total")
        });
        let before = common::settled_probe_handles(own);
        let glibc_only = *glibc_only.get_or_insert(before);
        let opened: Mapped = plugin.command("open");
        assert!(opened.mapped, "the library was not mapped");
        mapscope.scrape_until(Duration::from_secs(10), |metrics| {
            mimalloc_series(metrics, pid)
        });
        if budgeted {
            // Counted while the governor has the family on: several runs see some of it.
            let mut seen = 0.0;
            for _ in 0..15 {
                let _: AskedFor = plugin.command("go");
                std::thread::sleep(Duration::from_millis(700));
                seen = native_totals(&mapscope.scrape(), pid, "mimalloc")[0];
                if seen > 0.0 {
                    break;
                }
            }
            assert!(
                seen > 0.0,
                "no call into the library loaded later was counted"
            );
        } else {
            let probed = common::settled_probe_handles(own);
            assert!(
                probed > before,
                "no probe added for the library: {before} handles before, {probed} after"
            );
            for round in 1..=2 {
                if round == 2 {
                    // Unloaded and loaded again: probed again, counted on.
                    let closed: Mapped = plugin.command("close");
                    assert!(!closed.mapped);
                    let opened: Mapped = plugin.command("open");
                    assert!(opened.mapped);
                    let again =
                        common::settled_probe_handles_at(own, probed, Duration::from_secs(20));
                    assert_eq!(
                        again, probed,
                        "the library loaded again was not probed again: {again} handles, \
                         {probed} the first time"
                    );
                }
                let asked: AskedFor = plugin.command("go");
                let expected =
                    [asked.objects, asked.bytes, asked.frees].map(|n| n as f64 * f64::from(round));
                let counted = native_totals(
                    &mapscope.scrape_until(Duration::from_secs(10), |metrics| {
                        native_totals(metrics, pid, "mimalloc")[..3] == expected
                    }),
                    pid,
                    "mimalloc",
                );
                assert_eq!(
                    counted[..3],
                    expected,
                    "round {round}: the library's calls counted (objects, bytes, frees)"
                );
                println!("loaded later, round {round}: counted {counted:?}");
            }
        }
        let closed: Mapped = plugin.command("close");
        assert!(!closed.mapped, "the library stayed mapped");
        // Its probes go: once their removal is done, mapscope holds at most the C library's,
        // and holds them again when the family is on (the governor puts a family back on part
        // of the time, then all of it once the idle program costs it nothing): a probe left
        // behind would come back with them.
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let mut count = common::probe_handles(own);
        while count > glibc_only {
            assert!(
                std::time::Instant::now() < deadline,
                "still {count} probe handles a minute after the library was unloaded, \
                 {glibc_only} on the C library alone; mapscope's log:\n{}",
                mapscope.stderr.all()
            );
            std::thread::sleep(Duration::from_millis(20));
            count = common::probe_handles(own);
        }
        // Then never more: a probe left behind would be put back with the C library's when
        // the family comes on (under the budget, for a part of each cycle: the count is read
        // every 5 ms, more often than the probes go in). Watched until the family has been on
        // and a cycle more.
        let mut on_at = None;
        loop {
            let now = common::probe_handles(own);
            assert!(
                now <= glibc_only,
                "{now} probe handles after the library was unloaded, {glibc_only} on the C \
                 library alone; mapscope's log:\n{}",
                mapscope.stderr.all()
            );
            if now == glibc_only {
                on_at.get_or_insert_with(std::time::Instant::now);
            }
            if on_at.is_some_and(|at| at.elapsed() > Duration::from_secs(10)) {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the native probes never came back on after the library was unloaded (now \
                 {now} handles); mapscope's log:\n{}",
                mapscope.stderr.all()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        let log = mapscope.stderr.all();
        assert!(
            log.contains("its allocator's probes removed"),
            "the removal was not said: {log}"
        );
        println!(
            "{}: {glibc_only} handles on the C library, back to that once unloaded",
            if budgeted { "budgeted" } else { "unbudgeted" }
        );
    }
}

/// jemalloc's own totals in a Redis server (`MEMORY MALLOC-STATS`, its `malloc_stats_print`):
/// allocations and deallocations, over every arena.
fn jemalloc_totals(socket: &Path) -> (f64, f64) {
    let output = Command::new("redis-cli")
        .arg("-s")
        .arg(socket)
        .args(["MEMORY", "MALLOC-STATS"])
        .output()
        .expect("running redis-cli: run `cargo xtask test`, which installs redis-tools");
    let stats = String::from_utf8_lossy(&output.stdout);
    // "total: allocated nmalloc (#/sec) ndalloc (#/sec) nrequests ...", merged arenas.
    let fields: Vec<f64> = stats
        .lines()
        .find(|line| line.starts_with("total:"))
        .unwrap_or_else(|| panic!("no totals in jemalloc's statistics:\n{stats}"))
        .split_whitespace()
        .skip(1)
        .map(|field| field.parse().unwrap())
        .collect();
    (fields[1], fields[3])
}

/// A real server from Debian's packages that allocates through Debian's jemalloc (Redis, as
/// `redis-tools` ships it: linked with libjemalloc.so.2, calling its malloc, calloc, realloc
/// and free) is found to use jemalloc, and what mapscope counts of a benchmark's load (all the
/// time, `--max-overhead 0`) agrees with jemalloc's own statistics, its thread caches off so
/// that they are exact: the blocks added to the live heap (allocations less frees) are the
/// same, and the allocations differ only by the reallocs done in place, which mapscope counts
/// as an allocation and a free and jemalloc not at all (a few percent of them in Redis).
#[test]
#[ignore = "needs root and Debian's redis-tools: run `cargo xtask test`"]
fn a_debian_server_on_jemalloc_is_counted_as_jemalloc_counts_itself() {
    // Redis is one executable: run as `redis-server`, it serves.
    let folder = Path::new(env!("CARGO_TARGET_TMPDIR")).join("redis");
    std::fs::create_dir_all(&folder).unwrap();
    let server = folder.join("redis-server");
    let _ = std::fs::remove_file(&server);
    std::os::unix::fs::symlink("/usr/bin/redis-check-rdb", &server).unwrap();
    let socket = folder.join("redis.sock");
    let _ = std::fs::remove_file(&socket);
    let redis = ChildGuard(
        Command::new(&server)
            .args([
                "--port",
                "0",
                "--save",
                "",
                "--appendonly",
                "no",
                "--unixsocket",
            ])
            .arg(&socket)
            .env("MALLOC_CONF", "tcache:false")
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let pid = redis.0.id();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !socket.exists() {
        assert!(std::time::Instant::now() < deadline, "Redis did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let jemalloc = system_library("libjemalloc.so.2");
    let report = inspect_json(&["--pid", &pid.to_string()]);
    check_allocator(&report, "jemalloc", &jemalloc, false);

    let mapscope = Mapscope::attach_unbudgeted(pid);
    mapscope.scrape_until(Duration::from_secs(10), |metrics| {
        metrics.has("mapscope_native_alloc_objects_total")
    });
    // Redis is never idle (its timer allocates ten times a second or so): the two views are
    // read close together, each stretch between them a second or two of that.
    let before = native_totals(&mapscope.scrape(), pid, "jemalloc");
    let (allocated_before, freed_before) = jemalloc_totals(&socket);
    let benchmark = Command::new("redis-benchmark")
        .arg("-s")
        .arg(&socket)
        .args(["-n", "20000", "-t", "set,get,lpush,lpop,sadd,hset", "-q"])
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(benchmark.success());
    let (allocated_after, freed_after) = jemalloc_totals(&socket);
    // The collector reads the kernel's counts once a second.
    std::thread::sleep(Duration::from_millis(2500));
    let after = native_totals(&mapscope.scrape(), pid, "jemalloc");
    let counted = (after[0] - before[0], after[2] - before[2]);
    let own = (
        allocated_after - allocated_before,
        freed_after - freed_before,
    );
    println!(
        "Redis on jemalloc: mapscope {} allocations, {} frees; jemalloc {} and {}",
        counted.0, counted.1, own.0, own.1
    );
    assert!(own.0 > 100_000.0, "the benchmark allocated little: {own:?}");
    // Each statistics query allocates its text and frees it after reading the totals, and
    // the timer's allocations of the stretches between the two views' reads are mapscope's
    // alone: a few dozen blocks at most.
    let live = (counted.0 - counted.1, own.0 - own.1);
    assert!(
        (live.0 - live.1).abs() <= 100.0,
        "blocks added to the live heap: mapscope {}, jemalloc {}",
        live.0,
        live.1
    );
    let in_place = counted.0 - own.0;
    assert!(
        in_place >= -100.0 && in_place <= 0.1 * counted.0,
        "mapscope counted {} allocations, jemalloc {}: the difference is reallocs in place, \
         never fewer, and a few percent",
        counted.0,
        own.0
    );
    let mut mapscope = mapscope;
    mapscope.signal(libc::SIGINT);
    assert!(mapscope.wait(Duration::from_secs(30)).success());
    let summary = mapscope.stdout.all();
    assert!(
        summary.contains("native allocations (jemalloc"),
        "{summary}"
    );
}

/// The probes are held within the default budget (1% of the target's CPU time): on a program
/// that allocates at a steady pace and works between its calls, as a service does, they are on
/// part of the time, the coverage gauge says how much, and the scaled totals still match what
/// the program asked for. Its load: two threads, 100 rounds a second each of 9 allocations
/// and 10 frees, and 3 ms of their own work a round. Counted all the time, the traps (glibc's
/// `free` is stepped, about 6 µs here) would cost it about 2.5% of its CPU time: a duty of
/// about 0.4, several on parts in the 40 s.
#[test]
#[ignore = "needs root and gcc: run `cargo xtask test`"]
fn by_default_the_probes_are_held_within_the_budget_and_scaled() {
    let binary = build_allocs();
    let mut allocs = Fixture::start(&binary, None);
    let pid = allocs.pid();
    let mut mapscope = Mapscope::attach_with(pid, &[]);
    mapscope.scrape_until(Duration::from_secs(10), |metrics| {
        metrics.has("mapscope_native_alloc_objects_total")
    });
    let ours = move |labels: &std::collections::BTreeMap<String, String>| {
        labels.get("pid").map(String::as_str) == Some(&pid.to_string())
    };
    // The duty while the load runs, every 5 s from its 15th second on (once it ends, the
    // probes cost nothing and rightly go back on all the time).
    let address = mapscope.address;
    let duties = std::thread::spawn(move || {
        (0..5)
            .map(|round| {
                std::thread::sleep(Duration::from_secs(if round == 0 { 15 } else { 5 }));
                let metrics = common::Metrics(common::parse_prometheus(&common::http_get(
                    address, "/metrics",
                )));
                metrics.sum("mapscope_probe_duty_cycle", |labels| {
                    ours(labels) && labels.get("probe").map(String::as_str) == Some("native")
                })
            })
            .collect::<Vec<f64>>()
    });
    let asked: AskedFor = allocs.command("pace 100 40 3000");
    let duties = duties.join().unwrap();
    // The last on part's share is settled halfway through the off part after it.
    std::thread::sleep(Duration::from_secs(6));
    let metrics = mapscope.scrape();
    let [objects, bytes, frees, ..] = native_totals(&metrics, pid, "glibc");
    let coverage = metrics.sum("mapscope_native_coverage_ratio", ours);
    println!(
        "asked {asked:?}; estimated {objects:.0} objects, {bytes:.0} bytes, {frees:.0} frees; \
         coverage {coverage:.3}; duty while loaded {duties:.3?}"
    );
    assert!(
        coverage < 0.9 && duties.iter().all(|duty| *duty < 0.9),
        "held: coverage {coverage}, duty while loaded {duties:?}"
    );
    for (name, estimated, actual) in [
        ("objects", objects, asked.objects),
        ("bytes", bytes, asked.bytes),
        ("frees", frees, asked.frees),
    ] {
        let error = estimated / actual as f64 - 1.0;
        assert!(
            error.abs() < 0.2,
            "{name}: estimated {estimated:.0}, asked {actual} ({:+.1}%)",
            error * 100.0
        );
    }
    mapscope.signal(libc::SIGINT);
    assert!(mapscope.wait(Duration::from_secs(30)).success());
    let summary = mapscope.stdout.all();
    assert!(
        summary.contains("no Go runtime") && summary.contains("native allocations (glibc"),
        "{summary}"
    );
}

/// `mapscope run` profiles a C program from its first instruction, through a wrapper that
/// execs it (`env`, which sets jemalloc as its allocator here: a library the program maps
/// only after mapscope attached), exactly, and exits with its status.
#[test]
#[ignore = "needs root, gcc and Debian's allocators: run `cargo xtask test`"]
fn run_follows_a_wrapper_to_a_c_program_and_counts_it_exactly() {
    let binary = build_allocs();
    for (preload, allocator) in [(None, "glibc"), (Some("libjemalloc.so.2"), "jemalloc")] {
        let mut args = vec![
            "run".to_owned(),
            "--listen".to_owned(),
            "127.0.0.1:0".to_owned(),
            "--max-overhead".to_owned(),
            "0".to_owned(),
            "--".to_owned(),
            "env".to_owned(),
        ];
        if let Some(library) = preload {
            args.push(format!("LD_PRELOAD={}", system_library(library).display()));
        }
        args.push(binary.to_str().unwrap().to_owned());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut mapscope = Mapscope::start(&args);
        mapscope
            .stdout
            .wait_for("the program's \"ready\"", Duration::from_secs(30), |line| {
                line == "ready"
            });
        let pid = mapscope
            .scrape_until(Duration::from_secs(10), |metrics| {
                metrics.has("mapscope_native_alloc_objects_total")
            })
            .0
            .iter()
            .find(|sample| sample.name == "mapscope_native_alloc_objects_total")
            .and_then(|sample| sample.labels.get("pid")?.parse::<u32>().ok())
            .unwrap();
        let before = settled_totals(&mapscope, pid, allocator);
        // Its start-up (the C library's buffer for standard output, the second thread) was
        // counted: the probes were in before its first instruction.
        assert!(before[0] >= 1.0, "{allocator}: nothing counted at start-up");
        mapscope.send("go");
        let line =
            mapscope
                .stdout
                .wait_for("the program's counts", Duration::from_secs(30), |line| {
                    line.starts_with('{')
                });
        let asked: AskedFor = serde_json::from_str(&line).unwrap();
        let expected = [
            before[0] + asked.objects as f64,
            before[1] + asked.bytes as f64,
            before[2] + asked.frees as f64,
        ];
        let after = native_totals(
            &mapscope.scrape_until(Duration::from_secs(10), |metrics| {
                native_totals(metrics, pid, allocator)[..3] == expected
            }),
            pid,
            allocator,
        );
        println!("run, {allocator}: before {before:?}, after {after:?}, asked {asked:?}");
        assert_eq!(after[..3], expected, "{allocator}");
        // Its standard input closes: it exits 0, and so does mapscope, with the summary.
        mapscope.close_stdin();
        let status = mapscope.wait(Duration::from_secs(30));
        assert_eq!(status.code(), Some(0), "{}", mapscope.stderr.all());
        let summary = mapscope.stdout.all();
        assert!(
            summary.contains(&format!("native allocations ({allocator}")),
            "{summary}"
        );
        assert!(
            mapscope.stderr.all().contains("exec'd by env"),
            "{}",
            mapscope.stderr.all()
        );
    }
}

/// The daemon profiles a selected program without a Go runtime as it comes (its selectors
/// match any program; `go` alone means Go only), its series carrying an empty `go_version`,
/// and removes them when it exits.
#[test]
#[ignore = "needs root and gcc: run `cargo xtask test`"]
fn the_daemon_profiles_a_selected_c_program() {
    let binary = common::build_fixture(
        "allocs.c",
        "allocs-daemon",
        &["-O1", "-fno-builtin", "-pthread"],
    );
    let mapscope = Mapscope::daemon_selecting(&binary, &["--max-overhead", "0"]);
    let mut allocs = Fixture::start(&binary, None);
    let pid = allocs.pid();
    let ours = |metrics: &common::Metrics| {
        metrics.0.iter().any(|sample| {
            sample.name == "mapscope_native_alloc_objects_total"
                && sample.labels.get("pid") == Some(&pid.to_string())
        })
    };
    let metrics = mapscope.scrape_until(Duration::from_secs(30), ours);
    assert!(ours(&metrics), "the daemon did not attach to PID {pid}");
    let sample = metrics
        .0
        .iter()
        .find(|sample| sample.name == "mapscope_native_alloc_objects_total")
        .unwrap();
    assert_eq!(
        sample.labels.get("go_version").map(String::as_str),
        Some("")
    );
    assert!(
        !metrics
            .0
            .iter()
            .any(|sample| sample.name == "mapscope_gc_cycles_total"
                && sample.labels.get("pid") == Some(&pid.to_string())),
        "a program without a Go runtime has no GC series"
    );
    let before = settled_totals(&mapscope, pid, "glibc");
    let asked: AskedFor = allocs.command("go");
    let expected = [
        before[0] + asked.objects as f64,
        before[1] + asked.bytes as f64,
        before[2] + asked.frees as f64,
    ];
    let after = native_totals(
        &mapscope.scrape_until(Duration::from_secs(10), |metrics| {
            native_totals(metrics, pid, "glibc")[..3] == expected
        }),
        pid,
        "glibc",
    );
    assert_eq!(after[..3], expected);
    drop(allocs);
    let gone = mapscope.scrape_until(Duration::from_secs(10), |metrics| !ours(metrics));
    assert!(!ours(&gone), "the series outlived the program");
}

/// What `sites.c` says its functions asked for in one run.
#[derive(Debug, serde::Deserialize)]
struct SiteBytes {
    big_bytes: u64,
    medium_bytes: u64,
    small_bytes: u64,
    bytes: u64,
    leaked_bytes: u64,
}

/// mapscope's site bytes for `pid`, summed by function.
fn site_bytes(metrics: &common::Metrics, pid: u32) -> std::collections::BTreeMap<String, f64> {
    let mut by_function = std::collections::BTreeMap::new();
    for sample in &metrics.0 {
        if sample.name == "mapscope_native_alloc_site_bytes_total"
            && sample.labels.get("pid") == Some(&pid.to_string())
        {
            *by_function
                .entry(sample.labels["function"].clone())
                .or_insert(0.0) += sample.value;
        }
    }
    by_function
}

/// A site fixture run once, counted all the time: the program (alive while this is), mapscope
/// attached to it, its answer to one command, and mapscope's metrics once every byte it says
/// it asked for is counted and the samples are read.
struct SampledRun<T> {
    _program: Fixture,
    mapscope: Mapscope,
    pid: u32,
    asked: T,
    metrics: common::Metrics,
}

impl<T: serde::de::DeserializeOwned> SampledRun<T> {
    /// `bytes`: what the answer says the program asked for in all.
    fn new(binary: &Path, command: &str, bytes: impl Fn(&T) -> u64) -> Self {
        let mut program = Fixture::start(binary, None);
        let pid = program.pid();
        let mapscope = Mapscope::attach_unbudgeted(pid);
        mapscope.scrape_until(Duration::from_secs(10), |metrics| {
            metrics.has("mapscope_native_alloc_objects_total")
        });
        let before = settled_totals(&mapscope, pid, "glibc");
        let asked: T = program.command(command);
        let wanted = before[1] + bytes(&asked) as f64;
        let metrics = mapscope.scrape_until(Duration::from_secs(10), |metrics| {
            native_totals(metrics, pid, "glibc")[1] >= wanted
        });
        // Two more reads: the samples of the last table retired come one read after it.
        std::thread::sleep(Duration::from_millis(2500));
        let later = mapscope.scrape();
        assert_eq!(
            native_totals(&later, pid, "glibc")[1],
            native_totals(&metrics, pid, "glibc")[1]
        );
        Self {
            _program: program,
            mapscope,
            pid,
            asked,
            metrics: later,
        }
    }
}

/// `function`'s estimated bytes in `by_function` match the `actual` bytes within four
/// standard deviations of the sampling (one sample per 512 KiB on average: a site of B bytes
/// has about B / 512 KiB samples, a relative error of 1/sqrt of that).
fn assert_within_sampling(
    run: &str,
    by_function: &std::collections::BTreeMap<String, f64>,
    function: &str,
    actual: u64,
) {
    let estimated = by_function.get(function).copied().unwrap_or(0.0);
    let bound = 4.0 / (actual as f64 / 524_288.0).sqrt();
    let error = estimated / actual as f64 - 1.0;
    assert!(
        error.abs() < bound,
        "{run}: {function}: estimated {estimated:.0}, asked {actual} ({:+.1}%, bound {:.1}%): \
         {by_function:?}",
        error * 100.0,
        bound * 100.0
    );
}

/// The call sites of the samples: `sites.c`'s three functions allocate about 8, 6 and 3 of
/// every 17 bytes through malloc, calloc and realloc, from two threads, and say how much each
/// asked for. mapscope's site bytes must match each within four standard deviations of its
/// sampling (one sample per 512 KiB on average: a site of B bytes has about B / 512 KiB
/// samples, a relative error of 1/sqrt of that), rank them right, and name each by the direct
/// caller, found from the return address at the allocator's entry: with DWARF (and no frame
/// pointers, as distributions build) with its source line; with frame pointers (and no DWARF)
/// with the deeper frames too. The pprof profile `go tool pprof` reads says the same.
#[test]
#[ignore = "needs root, gcc and Go toolchains: run `cargo xtask test`"]
fn sampled_sites_split_the_bytes_as_the_program_did() {
    for (name, flags, frame_pointers) in [
        (
            "sites-dwarf",
            &["-O1", "-g", "-fno-builtin", "-pthread"][..],
            false,
        ),
        (
            "sites-fp",
            &["-O1", "-fno-builtin", "-pthread", "-fno-omit-frame-pointer"][..],
            true,
        ),
    ] {
        let binary = common::build_fixture("sites.c", name, flags);
        let run = SampledRun::new(&binary, "go 20000", |asked: &SiteBytes| asked.bytes);
        let (asked, metrics, pid) = (&run.asked, &run.metrics, run.pid);
        let by_function = site_bytes(metrics, pid);
        println!("{name}: asked {asked:?}; mapscope's sites {by_function:?}");
        let mut ranked: Vec<(&String, &f64)> = by_function.iter().collect();
        ranked.sort_by(|a, b| b.1.total_cmp(a.1));
        let ranked: Vec<&str> = ranked
            .iter()
            .map(|(function, _)| function.as_str())
            .collect();
        assert_eq!(
            ranked[..3],
            ["big_allocs", "medium_allocs", "small_allocs"],
            "{name}: {by_function:?}"
        );
        for (function, actual) in [
            ("big_allocs", asked.big_bytes),
            ("medium_allocs", asked.medium_bytes),
            ("small_allocs", asked.small_bytes),
        ] {
            assert_within_sampling(name, &by_function, function, actual);
        }
        let locations: Vec<&String> = metrics
            .0
            .iter()
            .filter(|sample| {
                sample.name == "mapscope_native_alloc_site_bytes_total"
                    && sample.labels["function"] == "big_allocs"
            })
            .map(|sample| &sample.labels["location"])
            .collect();
        if frame_pointers {
            assert_eq!(locations, [""], "{name}: no DWARF, no line");
        } else {
            assert!(
                locations
                    .iter()
                    .all(|location| location.starts_with("sites.c:")),
                "{name}: {locations:?}"
            );
        }
        // The profile.
        let profile = std::env::temp_dir().join(format!("mapscope-{name}-{pid}.pb.gz"));
        std::fs::write(
            &profile,
            common::http_get_bytes(run.mapscope.address, "/debug/pprof/native"),
        )
        .unwrap();
        let profile = profile.to_str().unwrap();
        let top = common::go_tool(
            NEWEST_GO,
            &["pprof", "-top", "-sample_index=alloc_space", profile],
        );
        let first = top
            .lines()
            .skip_while(|line| !line.trim_start().starts_with("flat"))
            .nth(1)
            .unwrap_or_default();
        assert!(first.ends_with("big_allocs"), "{name}: {top}");
        let traces = common::go_tool(NEWEST_GO, &["pprof", "-traces", profile]);
        assert_eq!(
            traces.contains("work"),
            frame_pointers,
            "{name}: deeper frames only through frame pointers: {traces}"
        );
    }
}

#[derive(Debug, serde::Deserialize)]
struct NewSiteBytes {
    orders: u64,
    notes: u64,
    spares: u64,
    blocks: u64,
}

/// C++: `testdata/c/newsites.cpp`'s four functions allocate through four forms of `operator
/// new` (plain, array, nothrow array, aligned), which call `malloc` or `aligned_alloc` from
/// Debian's libstdc++, built without frame pointers, as is the program. Each site must be
/// the function that said `new`, named as C++ names it, with its share of the bytes within
/// the sampling bound (as `sampled_sites_split_the_bytes_as_the_program_did`), never
/// `operator new` and never a frame past it: the kernel program reads the caller from where
/// each `operator new` keeps its return address (`native::wrappers`).
#[test]
#[ignore = "needs root and g++: run `cargo xtask test`"]
fn cxx_sites_are_the_callers_of_operator_new() {
    let binary = common::build_fixture("newsites.cpp", "newsites", &["-O2", "-g"]);
    let run = SampledRun::new(&binary, "go 30000", |asked: &NewSiteBytes| {
        asked.orders + asked.notes + asked.spares + asked.blocks
    });
    let asked = &run.asked;
    let total = (asked.orders + asked.notes + asked.spares + asked.blocks) as f64;
    let by_function = site_bytes(&run.metrics, run.pid);
    println!("asked {asked:?}; mapscope's sites {by_function:?}");
    for (function, actual) in [
        ("shop::place_order()", asked.orders),
        ("shop::write_note(int)", asked.notes),
        ("shop::spare_parts(int)", asked.spares),
        ("shop::aligned_block(int)", asked.blocks),
    ] {
        assert_within_sampling("newsites", &by_function, function, actual);
    }
    // Nothing else of note: the C++ runtime's own start-up allocations are a few KiB.
    let elsewhere: f64 = by_function
        .iter()
        .filter(|(function, _)| !function.starts_with("shop::"))
        .map(|(_, bytes)| bytes)
        .sum();
    assert!(elsewhere < total * 0.01, "{by_function:?}");
}

/// mapscope's live bytes, objects and age at `function`'s sites, summed (age: the largest).
fn live_at(metrics: &common::Metrics, pid: u32, function: &str) -> (f64, f64, f64) {
    let ours = |labels: &std::collections::BTreeMap<String, String>| {
        labels.get("pid") == Some(&pid.to_string())
            && labels.get("function").map(String::as_str) == Some(function)
    };
    let age = metrics
        .0
        .iter()
        .filter(|sample| sample.name == "mapscope_native_inuse_age_seconds" && ours(&sample.labels))
        .map(|sample| sample.value)
        .fold(0.0, f64::max);
    (
        metrics.sum("mapscope_native_inuse_bytes", ours),
        metrics.sum("mapscope_native_inuse_objects", ours),
        age,
    )
}

/// `--native-inuse` tracks the sampled allocations until freed: `sites.c` leaks a known number
/// of bytes at one function while three others allocate and free seven times as much. The live
/// bytes at the leaking site must equal the leak within four standard deviations of the
/// sampling (one sample per 512 KiB), those at the others must be none, the live bytes grow old,
/// and once the program frees its leak nothing is live. The pprof profile shows the leak as
/// inuse_space.
#[test]
#[ignore = "needs root, gcc and Go toolchains: run `cargo xtask test`"]
fn the_live_heap_shows_the_leak_and_only_the_leak() {
    let binary = common::build_fixture(
        "sites.c",
        "sites-leak",
        &["-O1", "-g", "-fno-builtin", "-pthread"],
    );
    let mut sites = Fixture::start(&binary, None);
    let pid = sites.pid();
    let mapscope = Mapscope::attach_with(pid, &["--native-inuse"]);
    mapscope.scrape_until(Duration::from_secs(10), |metrics| {
        metrics.has("mapscope_native_alloc_objects_total")
    });
    let asked: SiteBytes = sites.command("leak 60000");
    let leaked = asked.leaked_bytes as f64;
    let metrics = mapscope.scrape_until(Duration::from_secs(10), |metrics| {
        live_at(metrics, pid, "leaky_allocs").0 > 0.0
    });
    std::thread::sleep(Duration::from_millis(2500));
    let metrics = {
        let later = mapscope.scrape();
        assert!(
            later.has("mapscope_native_inuse_bytes"),
            "no live heap series"
        );
        let _ = metrics;
        later
    };
    let (bytes, objects, age) = live_at(&metrics, pid, "leaky_allocs");
    let bound = 4.0 / (leaked / 524_288.0).sqrt();
    let error = bytes / leaked - 1.0;
    println!(
        "leaked {leaked}; mapscope: {bytes:.0} live bytes in {objects:.0} objects, {age:.1} s \
         old ({:+.1}%, bound {:.1}%)",
        error * 100.0,
        bound * 100.0
    );
    assert!(
        error.abs() < bound,
        "live {bytes:.0} against a leak of {leaked}"
    );
    assert!(age > 0.5, "the leak's age: {age}");
    for churn in ["big_allocs", "medium_allocs", "small_allocs"] {
        assert_eq!(
            live_at(&metrics, pid, churn).0,
            0.0,
            "{churn} freed all it allocated"
        );
    }
    let profile = std::env::temp_dir().join(format!("mapscope-inuse-{pid}.pb.gz"));
    std::fs::write(
        &profile,
        common::http_get_bytes(mapscope.address, "/debug/pprof/native"),
    )
    .unwrap();
    let top = common::go_tool(
        NEWEST_GO,
        &[
            "pprof",
            "-top",
            "-sample_index=inuse_space",
            profile.to_str().unwrap(),
        ],
    );
    let first = top
        .lines()
        .skip_while(|line| !line.trim_start().starts_with("flat"))
        .nth(1)
        .unwrap_or_default();
    assert!(first.ends_with("leaky_allocs"), "{top}");
    // The program frees its leak: nothing is live any more.
    let _: serde_json::Value = sites.command("free");
    let metrics = mapscope.scrape_until(Duration::from_secs(10), |metrics| {
        live_at(metrics, pid, "leaky_allocs").0 == 0.0
    });
    assert_eq!(
        live_at(&metrics, pid, "leaky_allocs").0,
        0.0,
        "freed, yet live"
    );
}

/// `mapscope profile native` writes the same kind of profile from a running process.
#[test]
#[ignore = "needs root, gcc and Go toolchains: run `cargo xtask test`"]
fn profile_native_writes_a_profile_pprof_opens() {
    let binary = common::build_fixture(
        "sites.c",
        "sites-profiled",
        &["-O1", "-g", "-fno-builtin", "-pthread"],
    );
    let mut sites = Fixture::start(&binary, None);
    let pid = sites.pid().to_string();
    let output = std::env::temp_dir().join(format!("mapscope-native-{pid}.pb.gz"));
    let mut profiling = Command::new(common::MAPSCOPE)
        .args(["profile", "native", "--pid", &pid, "--duration", "6s", "-o"])
        .arg(&output)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let asked: SiteBytes = sites.command("go 20000");
    let status = profiling.wait().unwrap();
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut profiling.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(status.success(), "{stderr}");
    let top = common::go_tool(
        NEWEST_GO,
        &[
            "pprof",
            "-top",
            "-sample_index=alloc_space",
            output.to_str().unwrap(),
        ],
    );
    println!("asked {asked:?}\n{top}");
    assert!(
        top.contains("big_allocs") && top.contains("small_allocs"),
        "{top}"
    );
}

/// A program with no C allocator (and no Go runtime) is refused with the reason and its exit
/// code, as a program mapscope cannot profile; no probe is left behind.
#[test]
#[ignore = "needs root and gcc: run `cargo xtask test`"]
fn a_program_without_an_allocator_is_refused() {
    let binary = common::build_fixture("noalloc.c", "noalloc", &["-O1", "-nostdlib", "-static"]);
    let target = ChildGuard(Command::new(&binary).spawn().unwrap());
    let output = Command::new(common::MAPSCOPE)
        .args(["attach", "--pid", &target.0.id().to_string()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(4), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("is not a Go program, and no C allocator found"),
        "{stderr}"
    );
}

/// A cgo Go program gets both, side by side, each right: its GC cycles as the runtime counts
/// them, and the C allocations it makes through cgo as it counts them (the Go runtime's own
/// calls into the C library, a new thread's, may add a few).
#[test]
#[ignore = "needs root, gcc and Go toolchains: run `cargo xtask test`"]
fn a_cgo_program_gets_go_and_native_series() {
    let binary = common::build_go("gcload", NEWEST_GO, &["-tags=mapscope_cgo"]);
    let mut target = common::GoTarget::start(&binary, &[]);
    let pid = target.pid();
    let mapscope = Mapscope::attach_unbudgeted(pid);
    let report = target.run_load();
    let metrics = mapscope.scrape_until(Duration::from_secs(10), |metrics| {
        metrics.gc_cycles() >= report.gc_cycles
    });
    assert_eq!(metrics.gc_cycles(), report.gc_cycles);
    let before = native_totals(&metrics, pid, "glibc");
    target.send("cmalloc");
    let line = target
        .stdout
        .wait_for("the C allocations", Duration::from_secs(30), |line| {
            line.contains("\"objects\"")
        });
    let asked: AskedFor = serde_json::from_str(&line).unwrap();
    let asked = [asked.objects, asked.bytes, asked.frees].map(|n| n as f64);
    let metrics = mapscope.scrape_until(Duration::from_secs(10), |metrics| {
        native_totals(metrics, pid, "glibc")[0] >= before[0] + asked[0]
    });
    let after = native_totals(&metrics, pid, "glibc");
    println!("cgo: asked {asked:?}; mapscope {before:?} -> {after:?}");
    for index in 0..3 {
        let counted = after[index] - before[index];
        let extra = if index == 1 { 64.0 * 1024.0 } else { 20.0 };
        assert!(
            counted >= asked[index] && counted <= asked[index] + extra,
            "counted {counted}, asked {} ({after:?} - {before:?})",
            asked[index]
        );
    }
}

/// glibc's `reallocarray` ends by jumping to `realloc` through its PLT slot, and `realloc` to
/// `malloc` for a null pointer: found in the code, so that the kernel counts such a call once
/// without a time limit (which a busy machine passes).
#[test]
#[ignore = "needs gcc and binutils: run `cargo xtask test`"]
fn the_c_librarys_tail_jumps_are_found_in_its_code() {
    let libc = system_library("libc.so.6");
    let data = std::fs::read(&libc).unwrap();
    let file = object::File::parse(&*data).unwrap();
    let allocator = mapscope::native::allocator::allocators_in(&file)
        .into_iter()
        .next()
        .unwrap();
    let entries = &allocator.entry_points;
    let position = |name: &str| {
        entries
            .iter()
            .position(|entry| entry.function == name)
            .unwrap_or_else(|| panic!("no {name}"))
    };
    let from = mapscope::native::tails::tail_from(&file, entries);
    let jumps_into =
        |from_name: &str, into: &str| from[position(into)] >> position(from_name) & 1 == 1;
    for (name, into) in entries.iter().zip(&from) {
        let sources: Vec<&str> = (0..entries.len())
            .filter(|source| into >> source & 1 == 1)
            .map(|source| entries[source].function.as_str())
            .collect();
        println!("{} <- {sources:?}", name.function);
    }
    assert!(jumps_into("reallocarray", "realloc"));
    assert!(jumps_into("realloc", "malloc"));
    assert!(jumps_into("reallocarray", "malloc"), "through realloc");
    assert!(!jumps_into("malloc", "free"));
    assert!(!jumps_into("malloc", "realloc"));
}
