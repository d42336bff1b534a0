//! Every supported Go release × every way Go binaries are built: default, stripped, PIE, static
//! (CGO_ENABLED=0), static-PIE (external linker) and dynamically linked cgo. For each, the
//! analysis of the unstripped build must match `go tool nm` and `go tool objdump`, its stripped
//! twin must resolve the same from the pclntab, and mapscope attached to the stripped twin must
//! count exactly the GC cycles and pauses the runtime reports.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a failure here is a test failure"
)]

mod common;

use std::time::Duration;

use common::{GoTarget, Mapscope};
use mapscope::gobin::{FunctionSource, GoBinary, abi};

struct Mode {
    name: &'static str,
    flags: &'static [&'static str],
    /// The same with the symbol table and DWARF stripped.
    stripped_flags: &'static [&'static str],
    env: &'static [(&'static str, &'static str)],
    pie: bool,
    static_link: bool,
}

const MODES: &[Mode] = &[
    Mode {
        name: "default",
        flags: &[],
        stripped_flags: &["-ldflags=-s -w"],
        env: &[],
        pie: false,
        static_link: true,
    },
    Mode {
        name: "pie",
        flags: &["-buildmode=pie"],
        stripped_flags: &["-buildmode=pie", "-ldflags=-s -w"],
        env: &[],
        pie: true,
        static_link: false,
    },
    Mode {
        name: "static",
        flags: &[],
        stripped_flags: &["-ldflags=-s -w"],
        env: &[("CGO_ENABLED", "0")],
        pie: false,
        static_link: true,
    },
    Mode {
        name: "static-pie",
        flags: &[
            "-buildmode=pie",
            "-ldflags=-linkmode=external -extldflags=-static-pie",
        ],
        stripped_flags: &[
            "-buildmode=pie",
            "-ldflags=-s -w -linkmode=external -extldflags=-static-pie",
        ],
        env: &[("CGO_ENABLED", "1")],
        pie: true,
        static_link: true,
    },
    Mode {
        name: "cgo-dynamic",
        flags: &["-tags=mapscope_cgo"],
        stripped_flags: &["-tags=mapscope_cgo", "-ldflags=-s -w"],
        env: &[("CGO_ENABLED", "1")],
        pie: false,
        static_link: false,
    },
];

fn check_release(version: &str) {
    for mode in MODES {
        let what = format!("Go {version}, {}", mode.name);
        let full_path = common::build_go_env("gcload", version, mode.flags, mode.env);
        let bare_path = common::build_go_env("gcload", version, mode.stripped_flags, mode.env);
        let wanted = [abi::STOP_THE_WORLD, abi::START_THE_WORLD];
        let full = GoBinary::open(&full_path, &wanted).unwrap();
        let bare = GoBinary::open(&bare_path, &wanted).unwrap();
        assert_eq!(full.function_source, FunctionSource::SymbolTable, "{what}");
        assert_eq!(bare.function_source, FunctionSource::Pclntab, "{what}");
        assert_eq!(
            (full.layout.pie, full.layout.static_link),
            (mode.pie, mode.static_link),
            "{what}: link layout"
        );
        assert_eq!(
            (bare.layout.pie, bare.layout.static_link),
            (mode.pie, mode.static_link),
            "{what}: stripped link layout"
        );

        for function in wanted {
            let nm_address = common::nm_address(version, &full_path, function);
            let (in_full, in_bare) = (
                full.function(function).unwrap(),
                bare.function(function).unwrap(),
            );
            assert_eq!(
                in_full.address, nm_address,
                "{what}: {function} vs go tool nm"
            );
            assert_eq!(
                in_bare.address, nm_address,
                "{what}: {function} from the pclntab vs go tool nm"
            );
            let rets = common::objdump_rets(&common::objdump(version, &full_path, function));
            assert!(!rets.is_empty(), "{what}: no RET in objdump of {function}");
            assert_eq!(
                full.ret_sites(in_full),
                rets,
                "{what}: {function} RET sites vs go tool objdump"
            );
            assert_eq!(
                bare.ret_sites(in_bare),
                rets,
                "{what}: {function} RET sites from the pclntab"
            );
        }

        // runtime.MemProfileRate, which allocation estimates scale by: a variable, so not in
        // the pclntab; without symbols it is found through the runtime code that sets it. The
        // -s -w twin's data moves by the build flags its build info records, so the address
        // is checked on the same build with its symbols stripped by binutils.
        let rate = common::nm_symbol(version, &full_path, abi::MEM_PROFILE_RATE, &["D", "d"]);
        let symbol_less = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
            "strip-all-{version}-{}-{}",
            mode.name,
            std::process::id()
        ));
        let stripped = std::process::Command::new("strip")
            .arg("--strip-all")
            .arg(&full_path)
            .arg("-o")
            .arg(&symbol_less)
            .status()
            .unwrap();
        assert!(stripped.success(), "{what}: strip");
        let rate_at = |path: &std::path::Path| {
            let binary =
                GoBinary::open(path, &[abi::START_THE_WORLD, abi::MEM_PROFILE_RATE]).unwrap();
            assert_eq!(binary.function_source, FunctionSource::Pclntab, "{what}");
            binary
                .function(abi::MEM_PROFILE_RATE)
                .map(|variable| variable.address)
        };
        assert_eq!(
            rate_at(&symbol_less),
            Some(rate),
            "{what}: runtime.MemProfileRate without symbols vs nm"
        );
        assert!(rate_at(&bare_path).is_some(), "{what}: in the -s -w twin");
        std::fs::remove_file(&symbol_less).unwrap();

        // The type descriptors, which map type names are read from, are where the linker put
        // them (in a PIE, read through the moduledata's load-time relocations); the stripped
        // twin finds them through its moduledata alone, the same size give or take the build
        // flags its build info records.
        let (types, etypes) = (
            common::nm_symbol(version, &full_path, "runtime.types", &["R", "r", "D", "d"]),
            common::nm_symbol(version, &full_path, "runtime.etypes", &["R", "r", "D", "d"]),
        );
        assert_eq!(
            full.type_descriptors(),
            Some(types..etypes),
            "{what}: moduledata.types vs go tool nm"
        );
        let bare_types = bare.type_descriptors().expect("moduledata.types, stripped");
        assert!(
            (bare_types.end - bare_types.start).abs_diff(etypes - types) < 1024,
            "{what}: stripped moduledata.types {bare_types:x?}, nm {types:x}..{etypes:x}"
        );

        // The pause test on the stripped twin.
        if version.starts_with("1.19.") && mode.name == "static-pie" {
            // Go 1.19's own static-PIE executables die at start-up (SIGTRAP in the runtime's
            // initialisation), with or without mapscope; check that this is still so, since a
            // working one must be profiled like the others.
            let status = std::process::Command::new(&bare_path)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
                .unwrap();
            assert!(
                std::os::unix::process::ExitStatusExt::signal(&status).is_some(),
                "{what}: the Go 1.19 static-PIE build now runs ({status}): profile it like the others"
            );
            continue;
        }
        assert_gc_counted_exactly(&bare_path, &format!("{what} (stripped)"));
    }
}

/// mapscope attached to gcload built at `binary` counts exactly the GC cycles (MemStats.NumGC)
/// and GC pauses (the runtime's pause histogram) of a load window.
fn assert_gc_counted_exactly(binary: &std::path::Path, what: &str) {
    let mut target = GoTarget::start(binary, &["-duration", "300ms", "-forced-gcs", "5"]);
    let mapscope = Mapscope::attach(target.pid());
    let report = target.run_load();
    let metrics =
        mapscope.scrape_until(Duration::from_secs(10), |m| m.gc_cycles() >= report.num_gc);
    let pauses = metrics.sum("mapscope_stw_pause_seconds_count", common::is_gc_reason) as u64;
    let runtime_pauses = report
        .histogram("/sched/pauses/total/gc:seconds")
        .or_else(|| report.histogram("/gc/pauses:seconds"))
        .unwrap()
        .count;
    println!(
        "{what}: GC cycles {} vs NumGC {}, GC pauses {pauses} vs runtime {runtime_pauses}",
        metrics.gc_cycles(),
        report.num_gc
    );
    assert_eq!(
        metrics.gc_cycles(),
        report.num_gc,
        "{what}: GC cycles vs MemStats.NumGC"
    );
    assert_eq!(
        pauses, runtime_pauses,
        "{what}: GC pauses vs the runtime's histogram"
    );
    target.send("exit");
}

common::per_go_release! {
    check_release;
    build_modes_go1_19 => "1.19.8",
    build_modes_go1_21 => "1.21.13",
    build_modes_go1_22 => "1.22.10",
    build_modes_go1_23 => "1.23.9",
    build_modes_go1_24 => "1.24.11",
    build_modes_go1_25 => "1.25.5",
    build_modes_go1_26 => "1.26.6",
    build_modes_go1_27 => "1.27.3",
}

/// A copy of `binary` without Go build info, as some real Go programs ship (esbuild's npm
/// binaries): the `.go.buildinfo` section renamed and its magic zeroed, so neither the section
/// nor the magic is found. The runtime does not read that blob, so the program runs as before.
fn without_build_info(binary: &std::path::Path, name: &str) -> std::path::PathBuf {
    let mut bytes = std::fs::read(binary).unwrap();
    let word = |bytes: &[u8], at: usize, len: usize| -> usize {
        let mut value = [0u8; 8];
        value[..len].copy_from_slice(&bytes[at..at + len]);
        usize::try_from(u64::from_le_bytes(value)).unwrap()
    };
    let (section_headers, entry_size) = (word(&bytes, 0x28, 8), word(&bytes, 0x3a, 2));
    let (count, names_index) = (word(&bytes, 0x3c, 2), word(&bytes, 0x3e, 2));
    let names = word(&bytes, section_headers + names_index * entry_size + 0x18, 8);
    let mut patched = false;
    for index in 0..count {
        let header = section_headers + index * entry_size;
        let name_at = names + word(&bytes, header, 4);
        if bytes[name_at..].starts_with(b".go.buildinfo\0") {
            bytes[name_at..name_at + 13].copy_from_slice(b".no.buildinfo");
            let blob = word(&bytes, header + 0x18, 8);
            assert!(bytes[blob..].starts_with(b"\xff Go buildinf:"));
            bytes[blob..blob + 14].fill(0);
            patched = true;
        }
    }
    assert!(patched, "{}: no .go.buildinfo section", binary.display());
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("{name}-{}", std::process::id()));
    std::fs::write(&path, bytes).unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    path
}

/// A Go binary without build info is still Go: its release comes from `runtime.buildVersion`
/// (by symbol, or stripped through `runtime.schedinit`'s code), `inspect` says so, the
/// daemon's `go` selector takes it, and mapscope counts its GC exactly; on a bucket-map and a
/// swiss-table release.
fn no_build_info(version: &str) {
    use mapscope::gobin::{VersionSource, buildinfo};
    for (flags, source) in [
        (&[][..], VersionSource::BuildVersionSymbol),
        (
            &["-ldflags=-s -w"][..],
            VersionSource::BuildVersionViaSchedinit,
        ),
    ] {
        let what = format!("Go {version} {flags:?} without build info");
        let built = common::build_go("gcload", version, flags);
        let binary = without_build_info(&built, &format!("nobuildinfo-{version}-{}", flags.len()));
        let analysed = GoBinary::open(&binary, &[abi::START_THE_WORLD]).unwrap();
        assert_eq!(
            analysed.build_info.go_version,
            format!("go{version}"),
            "{what}"
        );
        assert_eq!(analysed.version_source, source, "{what}");
        assert!(analysed.function(abi::START_THE_WORLD).is_some(), "{what}");
        assert!(buildinfo::is_go_file(&binary), "{what}: the go selector");
        let inspect = std::process::Command::new(common::MAPSCOPE)
            .arg("inspect")
            .arg(&binary)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&inspect.stdout);
        assert!(
            inspect.status.success()
                && text.contains(&format!("go{version} (supported)"))
                && text.contains("no build info: from runtime.buildVersion"),
            "{what}: {text}{}",
            String::from_utf8_lossy(&inspect.stderr)
        );

        assert_gc_counted_exactly(&binary, &what);
    }
}

common::per_go_release! {
    no_build_info;
    no_build_info_go1_23 => "1.23.9",
    no_build_info_go1_27 => "1.27.3",
}
