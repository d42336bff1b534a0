//! The per-Go-release table (gobin::abi) and the binary analysis, checked against binaries
//! built by each release and against the Go toolchain's own tools.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a failure here is a test failure"
)]

mod common;

use mapscope::gobin::{
    FunctionSource, GoBinary, GoVersion,
    abi::{self, Support},
    dwarf::DwarfFacts,
};
use mapscope::probes::stw;

fn check_release(version: &str) {
    let path = common::build_go("gcload", version, &[]);
    let binary = GoBinary::open(&path, &[abi::STOP_THE_WORLD, abi::START_THE_WORLD]).unwrap();
    assert_eq!(binary.build_info.go_version, format!("go{version}"));
    assert_eq!(
        binary.version,
        format!("go{version}").parse::<GoVersion>().unwrap()
    );
    assert_eq!(
        binary.build_info.main_path.as_deref(),
        Some("mapscope.test/gcload")
    );
    let Support::Known(row) = abi::stw_abi(binary.version) else {
        panic!("Go {version} has no row in the table");
    };

    // moduledata.gofunc, where inline trees are found in stripped binaries, and types/etypes,
    // which type names are relative to, are where the table says (they moved in Go 1.21 and
    // 1.27).
    let module_row = abi::moduledata_row(binary.version).expect("a moduledata row");
    let moduledata_facts: &'static DwarfFacts = Box::leak(Box::new(DwarfFacts {
        members: &[],
        offsets: Box::leak(Box::new([
            ("runtime.moduledata", "gofunc", module_row.gofunc),
            ("runtime.moduledata", "types", module_row.types),
            ("runtime.moduledata", "etypes", module_row.etypes),
        ])),
        params: &[],
    }));
    assert_eq!(
        binary.dwarf_disagreements(moduledata_facts),
        Some(vec![]),
        "Go {version}: moduledata.gofunc, types, etypes"
    );
    // The stripped twin below finds a type section of the same size from its moduledata.
    let types = binary.type_descriptors().expect("moduledata.types");

    // The binary's DWARF confirms its row of the table, and tells it apart from the others.
    assert_eq!(
        binary.dwarf_disagreements(&row.dwarf),
        Some(vec![]),
        "Go {version}: DWARF vs its table row"
    );
    for other in abi::STW_TABLE
        .iter()
        .filter(|other| other.layout != row.layout)
    {
        let found = binary.dwarf_disagreements(&other.dwarf).unwrap();
        assert!(
            !found.is_empty(),
            "Go {version}: the DWARF check cannot tell it from {:?}",
            other.layout
        );
    }

    for function in [abi::STOP_THE_WORLD, abi::START_THE_WORLD] {
        let found = binary
            .function(function)
            .unwrap_or_else(|| panic!("{function} not found"));
        assert_eq!(
            found.address,
            common::nm_address(version, &path, function),
            "{function} address vs go tool nm"
        );

        let instructions = common::objdump(version, &path, function);
        // The entry probe sits on the instruction after the prologue's stack-check branch
        // (JBE to the morestack path), so a call that grows its stack counts once.
        let after_jbe = instructions
            .windows(2)
            .take(6)
            .find(|pair| pair[0].1.starts_with("JBE"))
            .map(|pair| pair[1].0)
            .unwrap_or_else(|| {
                panic!("no stack-check JBE at the start of {function}: {instructions:?}")
            });
        assert_eq!(
            binary.entry_site(found),
            after_jbe,
            "{function} entry probe site"
        );

        let rets = common::objdump_rets(&instructions);
        assert!(
            !rets.is_empty(),
            "go tool objdump shows no RET in {function}"
        );
        assert_eq!(
            binary.ret_sites(found),
            rets,
            "{function} RET sites vs go tool objdump"
        );
    }

    // The stripped twin (-s -w drops .symtab and DWARF, not code) resolves the same addresses
    // and RET sites from the Go pclntab.
    let stripped_path = common::build_go("gcload", version, &["-ldflags=-s -w"]);
    let stripped =
        GoBinary::open(&stripped_path, &[abi::STOP_THE_WORLD, abi::START_THE_WORLD]).unwrap();
    assert_eq!(binary.function_source, FunctionSource::SymbolTable);
    assert_eq!(stripped.function_source, FunctionSource::Pclntab);
    assert_eq!(stripped.build_info.go_version, format!("go{version}"));
    assert_eq!(
        stripped.dwarf_disagreements(&row.dwarf),
        None,
        "a stripped binary has no DWARF"
    );
    // Its type section, found from its moduledata, holds the same types: the same size but
    // for the build flags the build info records (a few dozen bytes).
    let stripped_types = stripped
        .type_descriptors()
        .expect("moduledata.types, stripped");
    assert!(
        stripped_types.end > stripped_types.start
            && (stripped_types.end - stripped_types.start).abs_diff(types.end - types.start) < 1024,
        "moduledata.types: {types:x?}, stripped twin {stripped_types:x?}"
    );
    for function in [abi::STOP_THE_WORLD, abi::START_THE_WORLD] {
        let (full, bare) = (
            binary.function(function).unwrap(),
            stripped.function(function).unwrap(),
        );
        assert_eq!(
            bare.address, full.address,
            "{function} address from the pclntab"
        );
        assert_eq!(
            stripped.ret_sites(bare),
            binary.ret_sites(full),
            "{function} RET sites in the stripped twin"
        );
    }
    assert!(stw::plan(&stripped, row, false).is_ok());
    // Where startTheWorldWithSema keeps its argument, for the probe at its RET: found by
    // disassembly, the same without symbols.
    assert_eq!(stw::start_frame(&stripped), stw::start_frame(&binary));

    // The GC trigger probe's bail-out check reads g.m, m.g0, m.locks and m.preemptoff where the
    // DWARF puts them.
    let gc_start = abi::gc_start_abi(binary.version).expect("a gcStart row");
    assert!(
        gc_start.first <= binary.version.release() && binary.version.release() <= gc_start.last
    );
    assert_eq!(
        binary.dwarf_disagreements(&gc_start.dwarf),
        Some(vec![]),
        "Go {version}: DWARF vs its gcStart row"
    );

    // The vitals' globals: the row's offsets agree with the DWARF (and tell the release from
    // the other rows), and the stripped twin, and a stripped PIE, find every global the
    // release needs through the runtime's code, at the address the symbol gives.
    let abi::VitalsSupport::Known(vitals) = abi::vitals_abi(binary.version) else {
        panic!("Go {version} has no vitals row");
    };
    assert_eq!(
        binary.dwarf_disagreements(&vitals.dwarf),
        Some(vec![]),
        "Go {version}: DWARF vs its vitals row"
    );
    for other in abi::VITALS_TABLE
        .iter()
        .filter(|other| other.dwarf != vitals.dwarf)
    {
        assert!(
            !binary.dwarf_disagreements(&other.dwarf).unwrap().is_empty(),
            "Go {version}: the DWARF check cannot tell it from the {:?} vitals row",
            other.first
        );
    }
    // The size classes the exact allocation counts are weighed with are this binary's own.
    {
        use object::{Object as _, ObjectSection as _, ObjectSymbol as _};
        let data = std::fs::read(&path).unwrap();
        let file = object::File::parse(&*data).unwrap();
        let symbol = file
            .symbols()
            .find(|symbol| {
                symbol
                    .name()
                    .is_ok_and(|name| abi::SIZE_CLASS_SYMBOLS.contains(&name))
            })
            .expect("a size class table");
        let section = file
            .section_by_index(symbol.section_index().unwrap())
            .unwrap();
        let bytes = section.data().unwrap();
        let start = (symbol.address() - section.address()) as usize;
        let table: Vec<u16> = bytes[start..start + 2 * abi::SIZE_CLASS_BYTES.len()]
            .chunks_exact(2)
            .map(|pair| u16::from_le_bytes([pair[0], pair[1]]))
            .collect();
        assert_eq!(table, abi::SIZE_CLASS_BYTES, "Go {version}: size classes");
    }

    // Symbols stripped after linking keep every address, so the globals found through the
    // code must sit where the symbols said; builds stripped by the linker (-s -w) lay data out
    // a little differently, so there they must be found (their values are checked against the
    // runtime in tests/vitals.rs).
    let wanted: Vec<&str> = abi::GLOBALS
        .iter()
        .copied()
        .chain([abi::STOP_THE_WORLD, abi::START_THE_WORLD])
        .collect();
    let needed = |global: &str| global != abi::WORK || vitals.cpu_stats.is_some();
    let scratch = tempfile::tempdir().unwrap();
    for flags in [&[][..], &["-buildmode=pie"][..]] {
        let full_path = common::build_go("gcload", version, flags);
        let full = GoBinary::open(&full_path, &wanted).unwrap();
        let bare_path = scratch.path().join("stripped");
        let status = std::process::Command::new("strip")
            .arg("--strip-all")
            .arg(&full_path)
            .arg("-o")
            .arg(&bare_path)
            .status()
            .unwrap();
        assert!(status.success());
        let bare = GoBinary::open(&bare_path, &wanted).unwrap();
        assert_eq!(bare.function_source, FunctionSource::Pclntab);
        for global in abi::GLOBALS {
            let expected = full.function(global).map(|found| found.address);
            assert!(expected.is_some(), "Go {version}: no symbol {global}");
            assert_eq!(
                bare.function(global).map(|found| found.address),
                expected.filter(|_| needed(global)),
                "Go {version} {flags:?}: {global} found through the code"
            );
        }
    }
    for flags in [
        &["-ldflags=-s -w"][..],
        &["-buildmode=pie", "-ldflags=-s -w"][..],
    ] {
        let bare = GoBinary::open(&common::build_go("gcload", version, flags), &wanted).unwrap();
        assert_eq!(
            stw::start_frame(&bare).is_some(),
            binary.version.release() >= (1, 22),
            "Go {version} {flags:?}: startTheWorldWithSema's frame copy of w"
        );
        for global in abi::GLOBALS.into_iter().filter(|global| needed(global)) {
            assert!(
                bare.function(global).is_some(),
                "Go {version} {flags:?}: {global} not found"
            );
        }
    }

    // By default no probe fires while the world is stopped; the stopping part adds one.
    let points = stw::plan(&binary, row, false).unwrap();
    let programs = |points: &[stw::ProbePoint]| {
        let mut programs: Vec<&str> = points.iter().map(|point| point.program).collect();
        programs.dedup();
        programs
    };
    let has_frame_copy = binary.version.release() >= (1, 22);
    assert_eq!(
        stw::start_frame(&binary).is_some(),
        has_frame_copy,
        "Go {version}: startTheWorldWithSema's frame copy of w"
    );
    assert_eq!(
        programs(&points),
        if has_frame_copy {
            vec![stw::START_RETURN]
        } else {
            vec![stw::STOP_ENTRY, stw::START_RETURN]
        },
        "Go {version}: default stop-the-world probes"
    );
    let with_stopping = stw::plan(&binary, row, true).unwrap();
    assert_eq!(
        programs(&with_stopping)
            .iter()
            .filter(|program| stw::INSIDE_PAUSE.contains(program))
            .count(),
        if binary.version.release() == (1, 22) {
            2
        } else {
            1
        },
        "Go {version}: --stw-stopping probes inside the pause"
    );
    for point in &points {
        // Non-PIE Go binaries map the text segment at a file offset equal to address - base.
        assert!(point.file_offset < std::fs::metadata(&path).unwrap().len());
    }
}

common::per_go_release! {
    check_release;
    table_and_analysis_go1_19 => "1.19.8",
    table_and_analysis_go1_21 => "1.21.13",
    table_and_analysis_go1_22 => "1.22.10",
    table_and_analysis_go1_23 => "1.23.9",
    table_and_analysis_go1_24 => "1.24.11",
    table_and_analysis_go1_25 => "1.25.5",
    table_and_analysis_go1_26 => "1.26.6",
    table_and_analysis_go1_27 => "1.27.3",
}

/// Bounded fuzzing of the whole binary analysis on real Go executables: random bytes changed
/// in the ELF headers, the build info and the pclntab must give an error or a result, never a
/// panic or a runaway allocation (every length read is checked against the file).
#[test]
#[ignore = "needs root and Go toolchains: run `cargo xtask test`"]
fn mutated_go_binaries_never_panic() {
    use object::{Object as _, ObjectSection as _};

    for flags in [&[][..], &["-ldflags=-s -w"][..]] {
        let path = common::build_go("gcload", "1.27.3", flags);
        let original = std::fs::read(&path).unwrap();
        let file = object::File::parse(&*original).unwrap();
        let mut regions = vec![(0u64, 4096u64)];
        for name in [".go.buildinfo", ".gopclntab"] {
            regions.push(file.section_by_name(name).unwrap().file_range().unwrap());
        }
        drop(file);
        let scratch = tempfile::tempdir().unwrap();
        let mutant_path = scratch.path().join("mutant");
        let mut state = 0x853c_49e6_748f_ea9bu64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for round in 0..150 {
            let mut mutant = original.clone();
            let (start, size) = regions[round % regions.len()];
            // Early bytes matter most (headers); later rounds reach further in.
            let span = size.min(64 + (round as u64) * 64);
            for _ in 0..1 + next() % 8 {
                let at = (start + next() % span) as usize;
                mutant[at] = next() as u8;
            }
            std::fs::write(&mutant_path, &mutant).unwrap();
            if let Ok(binary) =
                GoBinary::open(&mutant_path, &[abi::STOP_THE_WORLD, abi::START_THE_WORLD])
            {
                for function in [abi::STOP_THE_WORLD, abi::START_THE_WORLD] {
                    if let Some(found) = binary.function(function) {
                        let _ = binary.ret_sites(found);
                        let _ = binary.entry_site(found);
                    }
                }
            }
        }
    }
}
