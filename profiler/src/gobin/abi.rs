//! Per-Go-release facts about the runtime functions mapscope probes: one table, each row
//! citing the Go source it was read from, each row tested against a binary built by that
//! release (tests/go_versions.rs).
use profiler_common::stw::{StwCookie, StwLayout};

use super::{GoVersion, dwarf::DwarfFacts};

pub const STOP_THE_WORLD: &str = "runtime.stopTheWorldWithSema";
pub const START_THE_WORLD: &str = "runtime.startTheWorldWithSema";
/// `func profilealloc(mp *m, x unsafe.Pointer, size uintptr)`, the same in go1.19.8 through
/// go1.27.3 (src/runtime/malloc.go): called for each allocation the heap profiler samples.
pub const PROFILE_ALLOC: &str = "runtime.profilealloc";
/// `var MemProfileRate int` (src/runtime/mprof.go): bytes per sample, 512 KiB unless changed.
pub const MEM_PROFILE_RATE: &str = "runtime.MemProfileRate";
pub const DEFAULT_MEM_PROFILE_RATE: i64 = 512 * 1024;

/// `func mallocgc(size uintptr, typ *_type, needzero bool)`: every heap allocation in go1.19.8
/// through go1.25.5 goes through it (src/runtime/malloc.go).
pub const MALLOCGC: &str = "runtime.mallocgc";
/// Go 1.26+ (the SizeSpecializedMalloc experiment, on by default): compiled code also calls
/// these generated, size-class specialized allocators directly, with the same first argument
/// (src/runtime/malloc_generated.go; cmd/compile/internal/ssagen/ssa.go). They never fall back
/// into `mallocgc`, so probing them and it counts each allocation once.
pub const MALLOCGC_SPECIALIZED: &[&str] = &[
    "runtime.mallocgcSmallNoScanSC*",
    "runtime.mallocgcSmallScanNoHeaderSC*",
    "runtime.mallocgcTinySC*",
];

/// Everything mapscope looks up in a binary (a trailing `*` is a prefix).
pub const WANTED: &[&str] = &[
    STOP_THE_WORLD,
    START_THE_WORLD,
    PROFILE_ALLOC,
    MEM_PROFILE_RATE,
    MALLOCGC,
    MALLOCGC_SPECIALIZED[0],
    MALLOCGC_SPECIALIZED[1],
    MALLOCGC_SPECIALIZED[2],
];

/// The oldest and newest Go releases this table describes.
pub const OLDEST_SUPPORTED: (u32, u32) = (1, 19);
pub const NEWEST_KNOWN: (u32, u32) = (1, 27);

/// How one range of Go releases stops and starts the world.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StwAbi {
    pub first: (u32, u32),
    pub last: (u32, u32),
    pub layout: StwLayout,
    /// Stop/start reasons, indexed by the runtime's `stwReason` value (Go 1.21+).
    pub reasons: &'static [&'static str],
    /// Go 1.19: the texts callers leave in `m.preemptoff`, with the Go 1.21+ reason each
    /// became, so labels are the same whatever the release.
    pub reason_texts: &'static [(&'static str, &'static str)],
    /// Go 1.19: offsets of `g.m` and `m.preemptoff` (from the DWARF of a go1.19.8 binary:
    /// runtime.g member m at 48, runtime.m member preemptoff at 248).
    pub g_m_offset: u16,
    pub m_preemptoff_offset: u16,
    /// What a binary's DWARF must show for this row to apply (checked when it has DWARF).
    pub dwarf: DwarfFacts,
    /// Where in Go's source these facts come from.
    pub source: &'static str,
}

/// `stwReasonStrings`, identical in src/runtime/proc.go of go1.21.13, go1.22.10, go1.23.9,
/// go1.24.11, go1.25.5, go1.26.6 and go1.27.3.
const REASONS_GO121: &[&str] = &[
    "unknown",
    "GC mark termination",
    "GC sweep termination",
    "write heap dump",
    "goroutine profile",
    "goroutine profile cleanup",
    "all goroutines stack trace",
    "read mem stats",
    "AllThreadsSyscall",
    "GOMAXPROCS",
    "start trace",
    "stop trace",
    "CountPagesInUse (test)",
    "ReadMetricsSlow (test)",
    "ReadMemStatsSlow (test)",
    "PageCachePagesLeaked (test)",
    "ResetDebugLog (test)",
];

/// Go 1.19's `m.preemptoff` texts (src/runtime/mgc.go, proc.go and callers of
/// `stopTheWorld`/`stopTheWorldGC` in go1.19.8) and the Go 1.21 reason each corresponds to.
/// `gcStart` only runs with an empty `preemptoff`, so empty means sweep termination.
const REASON_TEXTS_GO119: &[(&str, &str)] = &[
    ("", "GC sweep termination"),
    ("gcing", "GC mark termination"),
    ("write heap dump", "write heap dump"),
    ("profile", "goroutine profile"),
    ("profile cleanup", "goroutine profile cleanup"),
    ("stack trace", "all goroutines stack trace"),
    ("read mem stats", "read mem stats"),
    ("doAllThreadsSyscall", "AllThreadsSyscall"),
    ("GOMAXPROCS", "GOMAXPROCS"),
    ("start tracing", "start trace"),
    ("stop tracing", "stop trace"),
];

pub const STW_TABLE: &[StwAbi] = &[
    StwAbi {
        first: (1, 19),
        last: (1, 19),
        layout: StwLayout::Go119,
        reasons: &[],
        reason_texts: REASON_TEXTS_GO119,
        g_m_offset: 48,
        m_preemptoff_offset: 248,
        dwarf: DwarfFacts {
            members: &[],
            offsets: &[("runtime.g", "m", 48), ("runtime.m", "preemptoff", 248)],
            params: &[
                (STOP_THE_WORLD, &[]),
                (START_THE_WORLD, &["emitTraceEvent"]),
            ],
        },
        source: "go1.19.8 src/runtime/proc.go: func stopTheWorldWithSema() (reason in \
                 getg().m.preemptoff); func startTheWorldWithSema(emitTraceEvent bool) int64",
    },
    StwAbi {
        first: (1, 21),
        last: (1, 21),
        layout: StwLayout::Go121,
        reasons: REASONS_GO121,
        reason_texts: &[],
        g_m_offset: 0,
        m_preemptoff_offset: 0,
        dwarf: DwarfFacts {
            members: &[],
            offsets: &[],
            params: &[(STOP_THE_WORLD, &["reason"]), (START_THE_WORLD, &[])],
        },
        source: "go1.21.13 src/runtime/proc.go: func stopTheWorldWithSema(reason stwReason); \
                 func startTheWorldWithSema() int64 (returns the restart time)",
    },
    StwAbi {
        first: (1, 22),
        last: (1, 22),
        layout: StwLayout::Go122,
        reasons: REASONS_GO121,
        reason_texts: &[],
        g_m_offset: 0,
        m_preemptoff_offset: 0,
        dwarf: DwarfFacts {
            members: &[("runtime.worldStop", &["reason", "start"])],
            offsets: &[],
            params: &[
                (STOP_THE_WORLD, &["reason"]),
                (START_THE_WORLD, &["now", "w"]),
            ],
        },
        source: "go1.22.10 src/runtime/proc.go: type worldStop struct { reason stwReason; \
                 start int64 }; func stopTheWorldWithSema(reason stwReason) worldStop; \
                 func startTheWorldWithSema(now int64, w worldStop) int64",
    },
    StwAbi {
        first: (1, 23),
        last: NEWEST_KNOWN,
        layout: StwLayout::Go123,
        reasons: REASONS_GO121,
        reason_texts: &[],
        g_m_offset: 0,
        m_preemptoff_offset: 0,
        dwarf: DwarfFacts {
            members: &[(
                "runtime.worldStop",
                &[
                    "reason",
                    "startedStopping",
                    "finishedStopping",
                    "stoppingCPUTime",
                ],
            )],
            offsets: &[],
            params: &[
                (STOP_THE_WORLD, &["reason"]),
                (START_THE_WORLD, &["now", "w"]),
            ],
        },
        source: "go1.23.9 .. go1.27.3 src/runtime/proc.go: type worldStop struct { reason \
                 stwReason; startedStopping, finishedStopping, stoppingCPUTime int64 }; \
                 func startTheWorldWithSema(now int64, w worldStop) int64",
    },
];

/// Offset of `gofunc` in `runtime.moduledata` per release range (from the DWARF of binaries
/// built by go1.19.8, go1.21.13–go1.26.6 and go1.27.3, which added `typedesclen`, `itaboffset`
/// and `itabsize` before it; checked against each binary's DWARF in tests/go_versions.rs).
pub const MODULEDATA_GOFUNC: &[ModuleDataRow] = &[
    ModuleDataRow {
        first: (1, 19),
        last: (1, 19),
        gofunc: 304,
    },
    ModuleDataRow {
        first: (1, 21),
        last: (1, 26),
        gofunc: 320,
    },
    ModuleDataRow {
        first: (1, 27),
        last: (1, 27),
        gofunc: 344,
    },
];

/// Where `runtime.moduledata` keeps `gofunc`, for a range of Go releases.
pub struct ModuleDataRow {
    pub first: (u32, u32),
    pub last: (u32, u32),
    pub gofunc: u64,
}

pub fn moduledata_gofunc_offset(version: GoVersion) -> Option<u64> {
    let release = version.release();
    MODULEDATA_GOFUNC
        .iter()
        .find(|row| row.first <= release && release <= row.last)
        .map(|row| row.gofunc)
}

/// What mapscope will do with a binary of this Go version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Support {
    Known(&'static StwAbi),
    /// Newer than the table: use the newest row and warn, since the layout may have changed.
    Newer(&'static StwAbi),
    TooOld,
    /// Between supported releases but not described (Go 1.20).
    Unsupported,
}

pub fn stw_abi(version: GoVersion) -> Support {
    let release = version.release();
    if release < OLDEST_SUPPORTED {
        return Support::TooOld;
    }
    if let Some(row) = STW_TABLE
        .iter()
        .find(|row| row.first <= release && release <= row.last)
    {
        return Support::Known(row);
    }
    match STW_TABLE.last() {
        Some(newest) if release > newest.last => Support::Newer(newest),
        _ => Support::Unsupported,
    }
}

impl StwAbi {
    /// The runtime's name for a `stwReason` value, or `None` if this release has no such value.
    pub fn reason_name(&self, reason: u32) -> Option<&'static str> {
        self.reasons.get(reason as usize).copied()
    }

    /// Go 1.19: the Go 1.21+ name for a `m.preemptoff` text, if it is one the runtime uses.
    pub fn reason_for_text(&self, text: &str) -> Option<&'static str> {
        self.reason_texts
            .iter()
            .find(|(known, _)| *known == text)
            .map(|&(_, name)| name)
    }

    /// The attach cookie for this release's probes.
    pub fn cookie(&self) -> u64 {
        StwCookie {
            layout: self.layout,
            g_m_offset: self.g_m_offset,
            m_preemptoff_offset: self.m_preemptoff_offset,
        }
        .encode()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_supported_release_has_exactly_one_row() {
        for minor in (OLDEST_SUPPORTED.1..=NEWEST_KNOWN.1).filter(|&minor| minor != 20) {
            let rows = STW_TABLE
                .iter()
                .filter(|row| row.first <= (1, minor) && (1, minor) <= row.last)
                .count();
            assert_eq!(rows, 1, "go1.{minor}");
        }
    }

    #[test]
    fn picks_layouts_by_release() {
        let layout = |minor, patch| match stw_abi(GoVersion::new(1, minor, patch)) {
            Support::Known(row) => Some(row.layout),
            _ => None,
        };
        assert_eq!(layout(19, 8), Some(StwLayout::Go119));
        assert_eq!(layout(21, 13), Some(StwLayout::Go121));
        assert_eq!(layout(22, 0), Some(StwLayout::Go122));
        assert_eq!(layout(23, 9), Some(StwLayout::Go123));
        assert_eq!(layout(27, 3), Some(StwLayout::Go123));
        assert_eq!(stw_abi(GoVersion::new(1, 18, 10)), Support::TooOld);
        assert_eq!(stw_abi(GoVersion::new(1, 20, 14)), Support::Unsupported);
        assert!(
            matches!(stw_abi(GoVersion::new(1, 28, 0)), Support::Newer(row) if row.layout == StwLayout::Go123)
        );
    }

    #[test]
    fn gc_reasons_sit_where_the_runtime_puts_them() {
        let Support::Known(row) = stw_abi(GoVersion::new(1, 27, 3)) else {
            panic!("1.27 is known")
        };
        assert_eq!(row.reason_name(1), Some("GC mark termination"));
        assert_eq!(row.reason_name(2), Some("GC sweep termination"));
        assert_eq!(row.reason_name(7), Some("read mem stats"));
        assert_eq!(row.reason_name(200), None);
    }

    #[test]
    fn go119_texts_map_to_the_same_reasons() {
        let Support::Known(old) = stw_abi(GoVersion::new(1, 19, 8)) else {
            panic!("1.19 is known")
        };
        assert_eq!(old.reason_for_text(""), Some("GC sweep termination"));
        assert_eq!(old.reason_for_text("gcing"), Some("GC mark termination"));
        assert_eq!(
            old.reason_for_text("doAllThreadsSyscall"),
            Some("AllThreadsSyscall")
        );
        assert_eq!(old.reason_for_text("something new"), None);
        let Support::Known(new) = stw_abi(GoVersion::new(1, 27, 3)) else {
            panic!("1.27 is known")
        };
        for (_, name) in REASON_TEXTS_GO119 {
            assert!(
                new.reasons.contains(name),
                "{name} is not a Go 1.21+ reason"
            );
        }
    }

    #[test]
    fn cookies_round_trip() {
        for row in STW_TABLE {
            let cookie = StwCookie::decode(row.cookie()).unwrap();
            assert_eq!(cookie.layout, row.layout);
            assert_eq!(cookie.g_m_offset, row.g_m_offset);
            assert_eq!(cookie.m_preemptoff_offset, row.m_preemptoff_offset);
        }
    }
}
