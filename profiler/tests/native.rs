//! Native allocators found, not assumed: `mapscope inspect` names the C allocator a program
//! or process allocates through (glibc's in libc.so.6 or linked statically; jemalloc, tcmalloc
//! and mimalloc from Debian's packages, preloaded) and its entry points, checked against
//! binutils' `nm` on the same files; a cgo Go program gets its Go report and its allocator.
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
};

use common::{ChildGuard, NEWEST_GO, inspect_json};
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

/// The C fixture, running (until its standard input closes) with `preload`, once it has
/// allocated and said so.
fn start_waiter(binary: &Path, preload: Option<&Path>) -> ChildGuard {
    let mut command = Command::new(binary);
    command.stdin(Stdio::piped()).stdout(Stdio::piped());
    if let Some(library) = preload {
        command.env("LD_PRELOAD", library);
    }
    let mut child = command.spawn().unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "ready");
    ChildGuard(child)
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
    let binary = common::build_c("waiter.c", "waiter", &["-O1"]);
    let libc = system_library("libc.so.6");
    let report = inspect_json(&[binary.to_str().unwrap()]);
    assert_eq!(report["go_version"], Value::Null);
    check_allocator(&report, "glibc", &libc, false);
    let features = report["features"].as_array().unwrap();
    assert_eq!(features[0]["name"], "native_allocations", "{report:#}");

    let waiter = start_waiter(&binary, None);
    let report = inspect_json(&["--pid", &waiter.0.id().to_string()]);
    check_allocator(&report, "glibc", &libc, false);
}

/// A statically linked C program carries glibc's allocator in the executable itself.
#[test]
#[ignore = "needs gcc and binutils: run `cargo xtask test`"]
fn a_static_c_program_carries_its_allocator() {
    let binary = common::build_c("waiter.c", "waiter-static", &["-O1", "-static"]);
    let report = inspect_json(&[binary.to_str().unwrap()]);
    check_allocator(&report, "glibc", &binary, true);
    let waiter = start_waiter(&binary, None);
    let report = inspect_json(&["--pid", &waiter.0.id().to_string()]);
    check_allocator(&report, "glibc", &binary, true);
}

/// jemalloc, tcmalloc and mimalloc replace malloc (here preloaded, as servers often deploy
/// them): each is found by its own symbols, named as the allocator behind malloc instead of
/// glibc's, with its own calls beside the standard ones (jemalloc's `*allocx`, the C++
/// operators tcmalloc and mimalloc define).
#[test]
#[ignore = "needs Debian's allocator packages: run `cargo xtask test`"]
fn replacement_allocators_are_found_by_their_own_symbols() {
    let binary = common::build_c("waiter.c", "waiter", &["-O1"]);
    for (library, kind, own) in [
        ("libjemalloc.so.2", "jemalloc", &["mallocx", "sdallocx"][..]),
        ("libtcmalloc_minimal.so.4", "tcmalloc", &["_Znwm"][..]),
        ("libmimalloc.so.2", "mimalloc", &["_Znwm"][..]),
    ] {
        let library = system_library(library);
        let waiter = start_waiter(&binary, Some(&library));
        let report = inspect_json(&["--pid", &waiter.0.id().to_string()]);
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
    reallocs: u64,
}

/// The kernel counts every call the program makes into its allocator, exactly, and none the
/// allocator makes to itself (glibc's `realloc(NULL, n)` jumps to `malloc`; jemalloc's and
/// tcmalloc's entry points call one another): `allocs.c` calls every standard entry point
/// from two threads and counts what it asked for, under glibc and under each preloaded
/// allocator.
#[test]
#[ignore = "needs root, gcc and Debian's allocators: run `cargo xtask test`"]
fn every_call_the_program_makes_is_counted_once() {
    use mapscope::native::probes::NativeProbes;
    let binary = common::build_c("allocs.c", "allocs", &["-O1", "-fno-builtin", "-pthread"]);
    let mut wrong = Vec::new();
    for preload in [
        None,
        Some("libjemalloc.so.2"),
        Some("libtcmalloc_minimal.so.4"),
        Some("libmimalloc.so.2"),
    ] {
        let library = preload.map(system_library);
        let mut command = Command::new(&binary);
        command.stdin(Stdio::piped()).stdout(Stdio::piped());
        if let Some(library) = &library {
            command.env("LD_PRELOAD", library);
        }
        let mut child = command.spawn().unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let guard = ChildGuard(child);
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "ready");
        let pid = guard.0.id();
        let allocators = mapscope::native::for_process(pid, None).unwrap();
        let probes = NativeProbes::attach(pid, &allocators).unwrap();
        let before = probes.counts().unwrap();
        use std::io::Write as _;
        writeln!(stdin, "go").unwrap();
        line.clear();
        stdout.read_line(&mut line).unwrap();
        let asked: AskedFor = serde_json::from_str(line.trim()).unwrap();
        let after = probes.counts().unwrap();
        let name = preload.unwrap_or("glibc");
        println!(
            "{name}: {} probes; counted {} objects, {} bytes, {} frees, {} reallocs ({} the \
             allocator's own calls); asked for {asked:?}",
            probes.attached,
            after.objects - before.objects,
            after.bytes - before.bytes,
            after.frees - before.frees,
            after.reallocs - before.reallocs,
            after.nested - before.nested,
        );
        let counted = (
            after.objects - before.objects,
            after.bytes - before.bytes,
            after.frees - before.frees,
            after.reallocs - before.reallocs,
        );
        if counted != (asked.objects, asked.bytes, asked.frees, asked.reallocs) {
            wrong.push(format!("{name}: counted {counted:?}, asked for {asked:?}"));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
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
