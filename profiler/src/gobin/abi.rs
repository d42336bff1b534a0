//! Per-Go-release facts about the runtime functions mapscope probes: one table, each row
//! citing the Go source it was read from, each row tested against a binary built by that
//! release (tests/go_versions.rs).
use profiler_common::{
    maps::{MapEvent, MapOp},
    stw::{StwCookie, StwFrame, StwLayout},
    trigger::GcStartCookie,
};

use super::{GoVersion, dwarf::DwarfFacts};

mod vitals;
pub use vitals::*;

pub const STOP_THE_WORLD: &str = "runtime.stopTheWorldWithSema";
pub const START_THE_WORLD: &str = "runtime.startTheWorldWithSema";
/// Entered by every goroutine that asks for a GC cycle, with the trigger (`gcTrigger`).
pub const GC_START: &str = "runtime.gcStart";
/// Called once per cycle, by the goroutine that starts it, from `gcStart` only.
pub const GC_BG_MARK_START_WORKERS: &str = "runtime.gcBgMarkStartWorkers";
/// `func profilealloc(mp *m, x unsafe.Pointer, size uintptr)`, the same in go1.19.8 through
/// go1.27.3 (src/runtime/malloc.go): called for each allocation the heap profiler samples.
pub const PROFILE_ALLOC: &str = "runtime.profilealloc";
/// `var MemProfileRate int` (src/runtime/mprof.go): bytes per sample, 512 KiB unless changed.
pub const MEM_PROFILE_RATE: &str = "runtime.MemProfileRate";
/// Set by the linker when no reachable code calls `runtime.MemProfile`: the runtime then sets
/// `MemProfileRate` to 0 when it starts.
pub const DISABLE_MEMORY_PROFILING: &str = "runtime.disableMemoryProfiling";
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

/// `makemap(t, hint int, h) *hmap` / `*maps.Map`: a map created with a size hint (src/runtime
/// map.go, map_swiss.go) in go1.19.8 through go1.27.3: type, hint, header in RAX, RBX, RCX.
pub const MAKEMAP: &str = "runtime.makemap";
/// Every runtime function a map operation of Go code calls, with the operation: each takes the
/// map type in RAX and the map in RBX, in go1.19.8 through go1.27.3. Bucket maps:
/// src/runtime/map.go, map_fast32.go, map_fast64.go, map_faststr.go (`func mapaccess1(t
/// *maptype, h *hmap, key unsafe.Pointer)`, `mapiterinit(t *maptype, h *hmap, it *hiter)`,
/// `mapclear(t *maptype, h *hmap)`, …). Swiss tables (1.24+): the same names, their bodies in
/// src/internal/runtime/maps/runtime*.go linknamed to them (`//go:linkname runtime_mapaccess1
/// runtime.mapaccess1`), and the compiler's `range` calls `mapIterStart(t, m, it)` instead of
/// `mapiterinit` (src/cmd/compile/internal/walk/range.go). A binary has only those it calls.
/// `mapaccessK` is left out: the runtime calls it, not Go code. Probed only in discovery
/// windows: they run on every map operation.
pub const MAP_OPERATIONS: &[(&str, MapOp)] = &[
    ("runtime.mapaccess1", MapOp::Lookup),
    ("runtime.mapaccess2", MapOp::Lookup),
    ("runtime.mapaccess1_fat", MapOp::Lookup),
    ("runtime.mapaccess2_fat", MapOp::Lookup),
    ("runtime.mapaccess1_fast32", MapOp::Lookup),
    ("runtime.mapaccess2_fast32", MapOp::Lookup),
    ("runtime.mapaccess1_fast64", MapOp::Lookup),
    ("runtime.mapaccess2_fast64", MapOp::Lookup),
    ("runtime.mapaccess1_faststr", MapOp::Lookup),
    ("runtime.mapaccess2_faststr", MapOp::Lookup),
    ("runtime.mapassign", MapOp::Assign),
    ("runtime.mapassign_fast32", MapOp::Assign),
    ("runtime.mapassign_fast32ptr", MapOp::Assign),
    ("runtime.mapassign_fast64", MapOp::Assign),
    ("runtime.mapassign_fast64ptr", MapOp::Assign),
    ("runtime.mapassign_faststr", MapOp::Assign),
    ("runtime.mapdelete", MapOp::Delete),
    ("runtime.mapdelete_fast32", MapOp::Delete),
    ("runtime.mapdelete_fast64", MapOp::Delete),
    ("runtime.mapdelete_faststr", MapOp::Delete),
    ("runtime.mapclear", MapOp::Delete),
    ("runtime.mapiterinit", MapOp::Iterate),
    ("runtime.mapIterStart", MapOp::Iterate),
];
const HASH_GROW: &str = "runtime.hashGrow";
const NEW_OVERFLOW: &str = "runtime.(*hmap).newoverflow";
const TABLE_GROW: &str = "internal/runtime/maps.(*table).grow";
const TABLE_SPLIT: &str = "internal/runtime/maps.(*table).split";

/// Everything mapscope looks up in a binary (a trailing `*` is a prefix).
pub const WANTED: &[&str] = &[
    MAKEMAP,
    // The map operations (`MAP_OPERATIONS`).
    "runtime.mapaccess1*",
    "runtime.mapaccess2*",
    "runtime.mapassign*",
    "runtime.mapdelete*",
    "runtime.mapclear",
    "runtime.mapiterinit",
    "runtime.mapIterStart",
    HASH_GROW,
    NEW_OVERFLOW,
    TABLE_GROW,
    TABLE_SPLIT,
    STOP_THE_WORLD,
    START_THE_WORLD,
    GC_START,
    GC_BG_MARK_START_WORKERS,
    PROFILE_ALLOC,
    MEM_PROFILE_RATE,
    DISABLE_MEMORY_PROFILING,
    MALLOCGC,
    MALLOCGC_SPECIALIZED[0],
    MALLOCGC_SPECIALIZED[1],
    MALLOCGC_SPECIALIZED[2],
    vitals::GC_CONTROLLER,
    vitals::MEMSTATS,
    vitals::WORK,
    vitals::GOMAXPROCS,
    vitals::SCHED,
    vitals::ALLGLEN,
    vitals::ALLP,
];

/// A row of one of the per-release tables: it applies from Go `first` to `last`.
pub trait ReleaseRow: 'static {
    fn releases(&self) -> ((u32, u32), (u32, u32));
}

macro_rules! release_rows {
    ($($row:ty),*) => {$(
        impl ReleaseRow for $row {
            fn releases(&self) -> ((u32, u32), (u32, u32)) {
                (self.first, self.last)
            }
        }
    )*};
}
release_rows!(StwAbi, ModuleDataRow, GcStartAbi, MapAbiRow, VitalsAbi);

/// The row of `table` whose range holds `release`.
pub fn row_for<T: ReleaseRow>(table: &'static [T], release: (u32, u32)) -> Option<&'static T> {
    table.iter().find(|row| {
        let (first, last) = row.releases();
        first <= release && release <= last
    })
}

/// The newest row of `table` when `release` is newer than every row.
fn newest_for<T: ReleaseRow>(table: &'static [T], release: (u32, u32)) -> Option<&'static T> {
    table.last().filter(|newest| release > newest.releases().1)
}

/// Where `runtime.gcStart`'s bail-out check (`gp == mp.g0 || mp.locks > 1 || mp.preemptoff !=
/// ""`, src/runtime/mgc.go) reads, for the trigger probe to skip the calls that return at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GcStartAbi {
    pub first: (u32, u32),
    pub last: (u32, u32),
    pub cookie: GcStartCookie,
    pub dwarf: DwarfFacts,
}

macro_rules! gc_start_row {
    ($first:expr, $last:expr, locks $locks:expr, preemptoff $preemptoff:expr) => {
        GcStartAbi {
            first: $first,
            last: $last,
            cookie: GcStartCookie {
                g_m: 48,
                m_g0: 0,
                m_locks: $locks,
                m_preemptoff: $preemptoff,
            },
            dwarf: DwarfFacts {
                members: &[],
                offsets: &[
                    ("runtime.g", "m", 48),
                    ("runtime.m", "g0", 0),
                    ("runtime.m", "locks", $locks),
                    ("runtime.m", "preemptoff", $preemptoff),
                ],
                params: &[],
            },
        }
    };
}

/// From the DWARF of gcload built by go1.19.8 through go1.27.3 (src/runtime/runtime2.go's `g`
/// and `m`); Go 1.25's `m` had two words fewer before `locks`.
pub const GC_START_TABLE: &[GcStartAbi] = &[
    gc_start_row!((1, 19), (1, 24), locks 264, preemptoff 248),
    gc_start_row!((1, 25), (1, 25), locks 256, preemptoff 240),
    gc_start_row!((1, 26), (1, 27), locks 264, preemptoff 248),
];

/// The row for `version`; for a release newer than the table, the newest, which the caller
/// must confirm against the binary's DWARF.
pub fn gc_start_abi(version: GoVersion) -> Option<&'static GcStartAbi> {
    let release = version.release();
    row_for(GC_START_TABLE, release).or_else(|| newest_for(GC_START_TABLE, release))
}

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

/// Offsets of `gofunc` and of the type descriptors' bounds (`types`, `etypes`) in
/// `runtime.moduledata` per release range (from the DWARF of binaries built by go1.19.8,
/// go1.21.13–go1.26.6 (`covctrs, ecovctrs` added) and go1.27.3 (`typedesclen` between `types`
/// and `etypes`, `itaboffset, itabsize` after); checked against each binary's DWARF in
/// tests/go_versions.rs).
pub const MODULEDATA_TABLE: &[ModuleDataRow] = &[
    ModuleDataRow {
        first: (1, 19),
        last: (1, 19),
        gofunc: 304,
        types: 280,
        etypes: 288,
    },
    ModuleDataRow {
        first: (1, 21),
        last: (1, 26),
        gofunc: 320,
        types: 296,
        etypes: 304,
    },
    ModuleDataRow {
        first: (1, 27),
        last: (1, 27),
        gofunc: 344,
        types: 296,
        etypes: 312,
    },
];

/// Where `runtime.moduledata` keeps what mapscope reads, for a range of Go releases.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ModuleDataRow {
    pub first: (u32, u32),
    pub last: (u32, u32),
    pub gofunc: u64,
    /// `types` and `etypes`: the type descriptors, which type names are offsets into.
    pub types: u64,
    pub etypes: u64,
}

pub fn moduledata_row(version: GoVersion) -> Option<&'static ModuleDataRow> {
    row_for(MODULEDATA_TABLE, version.release())
}

/// Where every type descriptor (`runtime._type`, `internal/abi.Type`: 48 bytes, the same in
/// go1.19.8 through go1.27.3) keeps its size, flags and name, and where a map type
/// (`runtime.maptype`, `abi.MapType`, `abi.SwissMapType`, which all start with that
/// descriptor) keeps its key and element types.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TypeAbi {
    /// `size` / `Size_` (uintptr).
    pub size: u64,
    /// `tflag` / `TFlag` (uint8).
    pub tflag: u64,
    /// `str` / `Str` (nameOff, int32): the name, as an offset from `moduledata.types`.
    pub name_offset: u64,
    /// `key` / `Key` (pointer to the key's type descriptor).
    pub map_key: u64,
    /// `elem` / `Elem`.
    pub map_elem: u64,
}

pub const TYPE_ABI: TypeAbi = TypeAbi {
    size: 0,
    tflag: 20,
    name_offset: 40,
    map_key: 48,
    map_elem: 56,
};

/// `tflagExtraStar` / `abi.TFlagExtraStar`: the stored name has a `*` in front that the type's
/// own name does not (the linker shares names between T and *T).
pub const TFLAG_EXTRA_STAR: u8 = 1 << 1;

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
    if let Some(row) = row_for(STW_TABLE, release) {
        return Support::Known(row);
    }
    match newest_for(STW_TABLE, release) {
        Some(newest) => Support::Newer(newest),
        None => Support::Unsupported,
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

    /// The attach cookie for this release's probes, with where this binary's
    /// `startTheWorldWithSema` keeps `w` (`None`: the probes read it at the entry).
    pub fn cookie(&self, frame: Option<StwFrame>) -> u64 {
        StwCookie {
            layout: self.layout,
            g_m_offset: self.g_m_offset,
            m_preemptoff_offset: self.m_preemptoff_offset,
            frame,
        }
        .encode()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The trigger probe's cookie carries the offsets through the kernel unchanged, and every
    /// supported release has one gcStart row.
    #[test]
    fn gc_start_rows_cover_every_release_and_round_trip() {
        each_supported_release_has_one_row(GC_START_TABLE);
        for row in GC_START_TABLE {
            assert_eq!(GcStartCookie::decode(row.cookie.encode()), row.cookie);
        }
        assert_eq!(
            gc_start_abi(GoVersion::new(1, 28, 0)),
            GC_START_TABLE.last()
        );
    }

    /// Every supported release (1.19, 1.21 to the newest known) falls in exactly one row.
    pub(super) fn each_supported_release_has_one_row<T: ReleaseRow>(table: &'static [T]) {
        for minor in (OLDEST_SUPPORTED.1..=NEWEST_KNOWN.1).filter(|&minor| minor != 20) {
            let rows = table
                .iter()
                .filter(|row| {
                    let (first, last) = row.releases();
                    first <= (1, minor) && (1, minor) <= last
                })
                .count();
            assert_eq!(rows, 1, "go1.{minor}");
        }
    }

    #[test]
    fn every_supported_release_has_exactly_one_row() {
        each_supported_release_has_one_row(STW_TABLE);
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
            let cookie = StwCookie::decode(row.cookie(None)).unwrap();
            assert_eq!(cookie.layout, row.layout);
            assert_eq!(cookie.g_m_offset, row.g_m_offset);
            assert_eq!(cookie.m_preemptoff_offset, row.m_preemptoff_offset);
            assert_eq!(cookie.frame, None);
            let frame = StwFrame {
                reason_below_sp: 0x45,
                started_below_sp: StwFrame::MAX_BELOW_SP,
            };
            let cookie = StwCookie::decode(row.cookie(Some(frame))).unwrap();
            assert_eq!((cookie.layout, cookie.frame), (row.layout, Some(frame)));
        }
    }
}

/// Where a bucket map (Go ≤ 1.23) keeps what a snapshot reads: byte offsets in `hmap` and in
/// the map type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BucketMapAbi {
    pub hmap_size: u64,
    pub count: u64,
    /// `hash0` (uint32), the map's random hash seed.
    pub hash0: u64,
    pub flags: u64,
    pub log2_buckets: u64,
    pub buckets: u64,
    pub old_buckets: u64,
    pub nevacuate: u64,
    /// `maptype.bucketsize` (uint16).
    pub type_bucket_size: u64,
}

/// Where a swiss-table map (Go 1.24+) keeps what a snapshot reads: byte offsets in `maps.Map`,
/// `maps.table` and the map type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SwissMapAbi {
    pub map_size: u64,
    pub used: u64,
    /// `seed` (uintptr), the map's random hash seed.
    pub seed: u64,
    pub dir_ptr: u64,
    pub dir_len: u64,
    pub global_depth: u64,
    pub writing: u64,
    pub table_size: u64,
    pub table_used: u64,
    pub table_capacity: u64,
    pub table_local_depth: u64,
    pub table_groups: u64,
    pub table_length_mask: u64,
    /// `GroupSize` (uintptr) in `abi.SwissMapType` / `abi.MapType`.
    pub type_group_size: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapAbi {
    Buckets(BucketMapAbi),
    Swiss(SwissMapAbi),
}

/// A runtime function whose entry is a map event, and the Go ABI argument slots (0 = RAX, 1 =
/// RBX, 2 = RCX) of its map header and map type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapEventProbe {
    pub function: &'static str,
    pub event: MapEvent,
    pub map_arg: u8,
    pub type_arg: u8,
}

pub struct MapAbiRow {
    pub first: (u32, u32),
    pub last: (u32, u32),
    pub abi: MapAbi,
    pub events: &'static [MapEventProbe],
    pub source: &'static str,
}

/// `hmap` and `maptype` of bucket maps, go1.19.8 through go1.23.9 (see the row's source).
const BUCKET_MAP_ABI: BucketMapAbi = BucketMapAbi {
    hmap_size: 48,
    count: 0,
    hash0: 12,
    flags: 8,
    log2_buckets: 9,
    buckets: 16,
    old_buckets: 24,
    nevacuate: 32,
    type_bucket_size: 82,
};

/// Go maps per release range. Each event function is entered exactly once per event:
/// `hashGrow` once per growth (never while one is in progress), `newoverflow` once per overflow
/// bucket; in swiss maps `rehash` calls either `grow` (capacity doubles) or `split` (a full
/// 1024-slot table becomes two).
pub const MAP_TABLE: &[MapAbiRow] = &[
    MapAbiRow {
        first: (1, 19),
        last: (1, 23),
        abi: MapAbi::Buckets(BUCKET_MAP_ABI),
        events: &[
            MapEventProbe {
                function: HASH_GROW,
                event: MapEvent::Growth,
                map_arg: 1,
                type_arg: 0,
            },
            MapEventProbe {
                function: NEW_OVERFLOW,
                event: MapEvent::Overflow,
                map_arg: 0,
                type_arg: 1,
            },
        ],
        source: "go1.19.8 .. go1.23.9 src/runtime/map.go: type hmap struct { count int; flags \
                 uint8; B uint8; noverflow uint16; hash0 uint32; buckets, oldbuckets \
                 unsafe.Pointer; nevacuate uintptr; extra *mapextra }; maptype (runtime/type.go, \
                 internal/abi/type.go): _type (48 B), key, elem, bucket, hasher, keysize uint8, \
                 valuesize uint8, bucketsize uint16; func hashGrow(t *maptype, h *hmap); func \
                 (h *hmap) newoverflow(t *maptype, b *bmap) *bmap",
    },
    MapAbiRow {
        first: (1, 24),
        last: (1, 27),
        abi: MapAbi::Swiss(SwissMapAbi {
            map_size: 48,
            used: 0,
            seed: 8,
            dir_ptr: 16,
            dir_len: 24,
            global_depth: 32,
            writing: 34,
            table_size: 32,
            table_used: 0,
            table_capacity: 2,
            table_local_depth: 6,
            table_groups: 16,
            table_length_mask: 24,
            type_group_size: 80,
        }),
        // Not `growToTable`: it turns an 8-entry small map into a table, below
        // MIN_TRACKED_ENTRIES, and fires for every map that outgrows 8 entries.
        events: &[
            MapEventProbe {
                function: TABLE_GROW,
                event: MapEvent::Growth,
                map_arg: 2,
                type_arg: 1,
            },
            MapEventProbe {
                function: TABLE_SPLIT,
                event: MapEvent::Growth,
                map_arg: 2,
                type_arg: 1,
            },
        ],
        source: "go1.24.11 .. go1.27.3 src/internal/runtime/maps: type Map struct { used uint64; \
                 seed uintptr; dirPtr unsafe.Pointer; dirLen int; globalDepth, globalShift, \
                 writing uint8; ... }; type table struct { used, capacity, growthLeft uint16; \
                 localDepth uint8; index int; groups groupsReference{data, lengthMask} }; \
                 SwissMapType/MapType: _type, Key, Elem, Group, Hasher, GroupSize (offset 80); \
                 func (t *table) grow(typ, m, newCapacity uint16); func (t *table) split(typ, \
                 m)",
    },
];

/// Go 1.24 and 1.25 built with GOEXPERIMENT=noswissmap keep bucket maps, with `clearSeq
/// uint64` added to `hmap` before `extra` (src/runtime/map_noswiss.go): 56 bytes, the fields
/// read here where they were.
pub const NOSWISS_MAP_ROW: MapAbiRow = MapAbiRow {
    first: (1, 24),
    last: (1, 25),
    abi: MapAbi::Buckets(BucketMapAbi {
        hmap_size: 56,
        ..BUCKET_MAP_ABI
    }),
    events: MAP_TABLE[0].events,
    source: "go1.24.11, go1.25.5 src/runtime/map_noswiss.go (GOEXPERIMENT=noswissmap)",
};

/// The map row for a release; the newest for releases after it (the caller has warned).
/// `has_bucket_maps` says the binary has `runtime.hashGrow`: a 1.24/1.25 program built without
/// swiss tables.
pub fn map_abi(version: GoVersion, has_bucket_maps: bool) -> Option<&'static MapAbiRow> {
    let release = version.release();
    if has_bucket_maps && (NOSWISS_MAP_ROW.first..=NOSWISS_MAP_ROW.last).contains(&release) {
        return Some(&NOSWISS_MAP_ROW);
    }
    row_for(MAP_TABLE, release).or_else(|| newest_for(MAP_TABLE, release))
}

/// Whether a binary's runtime has bucket maps (`hashGrow` exists only there).
pub fn has_bucket_maps(binary: &super::GoBinary) -> bool {
    binary.function(HASH_GROW).is_some()
}
