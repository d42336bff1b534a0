//! Where the runtime keeps the vitals mapscope reads from a target's memory: the runtime
//! globals, the offsets of the fields read, per Go release, each row checked against the DWARF
//! of a binary that release built (tests/go_versions.rs) and against any target's own DWARF
//! before a number is read.
use super::{GoVersion, OLDEST_SUPPORTED};
use crate::gobin::dwarf::DwarfFacts;
use crate::model::vitals::TimeHistogramLayout;

/// `var gcController gcControllerState` (src/runtime/mgcpacer.go).
pub const GC_CONTROLLER: &str = "runtime.gcController";
/// `var memstats mstats` (src/runtime/mstats.go).
pub const MEMSTATS: &str = "runtime.memstats";
/// `var work workType` (src/runtime/mgc.go).
pub const WORK: &str = "runtime.work";
/// `var gomaxprocs int32` (src/runtime/runtime2.go).
pub const GOMAXPROCS: &str = "runtime.gomaxprocs";
/// `var sched schedt` (src/runtime/runtime2.go).
pub const SCHED: &str = "runtime.sched";
/// `var allglen uintptr` (src/runtime/proc.go): goroutines ever made, live or free.
pub const ALLGLEN: &str = "runtime.allglen";
/// `var allp []*p` (src/runtime/runtime2.go).
pub const ALLP: &str = "runtime.allp";
pub const GLOBALS: [&str; 7] = [
    GC_CONTROLLER,
    MEMSTATS,
    WORK,
    GOMAXPROCS,
    SCHED,
    ALLGLEN,
    ALLP,
];

/// The runtime functions through which a stripped binary's globals are found (see
/// `gobin::runtime_vars::vitals_globals`): each passes a global's address as the receiver of a
/// method call, or reads it, in every supported release.
pub const GC_CONTROLLER_COMMIT: &str = "runtime.gcControllerCommit";
pub const COMMIT: &str = "runtime.(*gcControllerState).commit";
pub const GC_MARK_TERMINATION: &str = "runtime.gcMarkTermination";
pub const CPU_STATS_ACCUMULATE: &str = "runtime.(*cpuStats).accumulate";
pub const MCACHE_REFILL: &str = "runtime.(*mcache).refill";
pub const HEAP_STATS_ACQUIRE: &str = "runtime.(*consistentHeapStats).acquire";
pub const GOMAXPROCS_FUNCTION: &str = "runtime.GOMAXPROCS";
pub const LOCK2: &str = "runtime.lock2";
pub const FOR_EACH_G_RACE: &str = "runtime.forEachGRace";
pub const FLUSH_MCACHE: &str = "runtime.flushmcache";
pub const GLOBAL_USERS: [&str; 10] = [
    GC_CONTROLLER_COMMIT,
    COMMIT,
    GC_MARK_TERMINATION,
    CPU_STATS_ACCUMULATE,
    MCACHE_REFILL,
    HEAP_STATS_ACQUIRE,
    GOMAXPROCS_FUNCTION,
    LOCK2,
    FOR_EACH_G_RACE,
    FLUSH_MCACHE,
];

/// Fields of `runtime.gcControllerState` (byte offsets).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GcControllerFields {
    /// `gcPercent atomic.Int32`: GOGC (-1 when off).
    pub gc_percent: u64,
    /// `memoryLimit atomic.Int64`: GOMEMLIMIT in bytes.
    pub memory_limit: u64,
    /// `heapMarked uint64`: bytes marked live by the last cycle.
    pub heap_marked: u64,
    /// `heapScan`, `lastStackScan`, `globalsScan` (atomic.Uint64): scannable bytes.
    pub heap_scan: u64,
    pub last_stack_scan: u64,
    pub globals_scan: u64,
    /// What `heapGoalInternal` and `memoryLimitHeapGoal` read (src/runtime/mgcpacer.go):
    /// `gcPercentHeapGoal`, `sweepDistMinTrigger`, `totalAlloc`, `totalFree`, `mappedReady`
    /// (atomic.Uint64), `triggered` (uint64), `heapFree` (sysMemStat, a uint64).
    pub gc_percent_heap_goal: u64,
    pub sweep_dist_min_trigger: u64,
    pub triggered: u64,
    pub heap_free: u64,
    pub total_alloc: u64,
    pub total_free: u64,
    pub mapped_ready: u64,
    /// `memoryLimitHeapGoalHeadroomPercent` (Go 1.21+: 3); Go 1.19 keeps only the fixed
    /// `memoryLimitHeapGoalHeadroom` of 1 MiB, which is this formula with 0.
    pub heap_goal_headroom_percent: u64,
}

/// Fields of `runtime.cpuStats` (all int64 nanoseconds), the same offsets from Go 1.20 (where
/// it appeared) to 1.27; 1.23 exported their names (`gcAssistTime` became `GCAssistTime`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuStatsFields {
    pub gc_assist: u64,
    pub gc_dedicated: u64,
    pub gc_idle: u64,
    pub gc_pause: u64,
    pub gc_total: u64,
    pub scavenge_assist: u64,
    pub scavenge_background: u64,
    pub scavenge_total: u64,
    pub idle: u64,
    pub user: u64,
    pub total: u64,
}

pub const CPU_STATS: CpuStatsFields = CpuStatsFields {
    gc_assist: 0,
    gc_dedicated: 8,
    gc_idle: 16,
    gc_pause: 24,
    gc_total: 32,
    scavenge_assist: 40,
    scavenge_background: 48,
    scavenge_total: 56,
    idle: 64,
    user: 72,
    total: 80,
};
/// `size_of::<cpuStats>()`.
pub const CPU_STATS_SIZE: u64 = 88;

const CPU_STATS_MEMBERS_GO121: &[&str] = &[
    "gcAssistTime",
    "gcDedicatedTime",
    "gcIdleTime",
    "gcPauseTime",
    "gcTotalTime",
    "scavengeAssistTime",
    "scavengeBgTime",
    "scavengeTotalTime",
    "idleTime",
    "userTime",
    "totalTime",
];
const CPU_STATS_MEMBERS_GO123: &[&str] = &[
    "GCAssistTime",
    "GCDedicatedTime",
    "GCIdleTime",
    "GCPauseTime",
    "GCTotalTime",
    "ScavengeAssistTime",
    "ScavengeBgTime",
    "ScavengeTotalTime",
    "IdleTime",
    "UserTime",
    "TotalTime",
];

/// What `gcount()` reads (src/runtime/proc.go), which `/sched/goroutines` is: `allglen`, less
/// the free goroutines (counts in `sched.gFree` and in each P's `gFree`), less the system
/// goroutines (`sched.ngsys`) up to Go 1.25 (1.26 counts them: `gcount(includeSys = true)`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GoroutineFields {
    /// The int32 counts of free goroutines in `schedt`: `gFree.n` up to Go 1.24, then
    /// `gFree.stack.size` and `gFree.noStack.size`.
    pub sched_free: &'static [u64],
    /// `schedt.ngsys` (atomic.Int32), subtracted up to Go 1.25.
    pub sched_ngsys: Option<u64>,
    /// The int32 count of free goroutines in `p` (`gFree.n`, from Go 1.25 `gFree.size`).
    pub p_free: u64,
}

/// `runtime.heapStatsDelta` (src/runtime/mstats.go): `memstats.heapStats.stats` holds three,
/// one per generation, summed to read (`consistentHeapStats.read`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeapStatsFields {
    /// `size_of::<heapStatsDelta>()`.
    pub size: u64,
    /// `committed`, `released` (int64).
    pub committed: u64,
    pub released: u64,
    /// `largeAlloc`, `largeAllocCount`, `largeFree`, `largeFreeCount` (uint64).
    pub large_alloc: u64,
    pub large_alloc_count: u64,
    pub large_free: u64,
    pub large_free_count: u64,
    /// `smallAllocCount`, `smallFreeCount`: `[68]uint64`, by size class.
    pub small_alloc_count: u64,
    pub small_free_count: u64,
}

/// Up to Go 1.24 (with `inPtrScalarBits`).
const HEAP_STATS_GO119: HeapStatsFields = HeapStatsFields {
    size: 1176,
    committed: 0,
    released: 8,
    large_alloc: 56,
    large_alloc_count: 64,
    large_free: 616,
    large_free_count: 624,
    small_alloc_count: 72,
    small_free_count: 632,
};

/// Go 1.25 and later (`inPtrScalarBits` gone).
const HEAP_STATS_GO125: HeapStatsFields = HeapStatsFields {
    size: 1168,
    committed: 0,
    released: 8,
    large_alloc: 48,
    large_alloc_count: 56,
    large_free: 608,
    large_free_count: 616,
    small_alloc_count: 64,
    small_free_count: 624,
};

/// The `sysMemStat` (uint64) fields of `mstats` that `/memory/classes/total` adds:
/// `stacks_sys`, `mspan_sys`, `mcache_sys`, `buckhash_sys`, `gcMiscSys`, `other_sys`.
const MSTATS_SYS_GO119: [u64; 6] = [3544, 3552, 3560, 3568, 3576, 3584];
const MSTATS_SYS_GO125: [u64; 6] = [3520, 3528, 3536, 3544, 3552, 3560];
const MSTATS_SYS_NAMES: [&str; 6] = [
    "stacks_sys",
    "mspan_sys",
    "mcache_sys",
    "buckhash_sys",
    "gcMiscSys",
    "other_sys",
];

/// `class_to_size` (src/runtime/sizeclasses.go; from Go 1.25
/// `internal/runtime/gc.SizeClassToSize`): bytes per object of each size class, identical in
/// go1.19.8 through go1.27.3 (tests/go_versions.rs compares it with each binary's copy).
pub const SIZE_CLASS_BYTES: [u16; 68] = [
    0, 8, 16, 24, 32, 48, 64, 80, 96, 112, 128, 144, 160, 176, 192, 208, 224, 240, 256, 288, 320,
    352, 384, 416, 448, 480, 512, 576, 640, 704, 768, 896, 1024, 1152, 1280, 1408, 1536, 1792,
    2048, 2304, 2688, 3072, 3200, 3456, 4096, 4864, 5376, 6144, 6528, 6784, 6912, 8192, 9472, 9728,
    10240, 10880, 12288, 13568, 14336, 16384, 18432, 19072, 20480, 21760, 24576, 27264, 28672,
    32768,
];
/// Where a binary keeps its copy, by release.
pub const SIZE_CLASS_SYMBOLS: [&str; 2] = [
    "runtime.class_to_size",
    "internal/runtime/gc.SizeClassToSize",
];

/// One range of Go releases.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VitalsAbi {
    pub first: (u32, u32),
    pub last: (u32, u32),
    pub gc_controller: GcControllerFields,
    /// `mstats.numgc` and `numforcedgc` (uint32): cycles completed, and of those forced.
    pub numgc: u64,
    pub numforcedgc: u64,
    /// `mstats.heapStats`: only to find `memstats` in a stripped binary.
    pub heap_stats: u64,
    /// `workType.cpuStats` (embedded), from Go 1.20; `None` before.
    pub cpu_stats: Option<u64>,
    /// `schedt.lock`: only to find `sched` in a stripped binary.
    pub sched_lock: u64,
    /// `schedt.timeToRun`: the scheduling latency histogram.
    pub time_to_run: u64,
    pub latency_histogram: TimeHistogramLayout,
    pub goroutines: GoroutineFields,
    pub heap_stats_delta: HeapStatsFields,
    /// `mstats` offsets of the six fields `MSTATS_SYS_NAMES` names.
    pub sys: [u64; 6],
    pub dwarf: DwarfFacts,
    pub source: &'static str,
}

const GC_CONTROLLER_GO119: GcControllerFields = GcControllerFields {
    gc_percent: 0,
    memory_limit: 8,
    heap_marked: 184,
    heap_scan: 144,
    last_stack_scan: 160,
    globals_scan: 176,
    gc_percent_heap_goal: 104,
    sweep_dist_min_trigger: 112,
    triggered: 120,
    heap_free: 320,
    total_alloc: 328,
    total_free: 336,
    mapped_ready: 344,
    heap_goal_headroom_percent: 0,
};

const GC_CONTROLLER_GO121: GcControllerFields = GcControllerFields {
    gc_percent: 0,
    memory_limit: 8,
    heap_marked: 152,
    heap_scan: 112,
    last_stack_scan: 128,
    globals_scan: 144,
    gc_percent_heap_goal: 72,
    sweep_dist_min_trigger: 80,
    triggered: 88,
    heap_free: 288,
    total_alloc: 296,
    total_free: 304,
    mapped_ready: 312,
    heap_goal_headroom_percent: 3,
};

/// The anonymous structs `schedt.gFree` and `p.gFree` are, as DWARF names them.
const SCHED_GFREE_GO119: &str = "struct { runtime.lock runtime.mutex; runtime.stack runtime.gList; \
                                 runtime.noStack runtime.gList; runtime.n int32 }";
const SCHED_GFREE_GO125: &str = "struct { runtime.lock runtime.mutex; runtime.stack runtime.gList; runtime.noStack runtime.gList }";
const P_GFREE_GO119: &str = "struct { runtime.gList; runtime.n int32 }";

/// What every row's DWARF must show, for the DWARF check: each offset the row reads.
macro_rules! offsets {
    (
        $gc:expr, $numgc:expr, $sched_lock:expr, $time_to_run:expr, $histogram:expr,
        $hs:expr, $sys:expr $(, $more:expr)*
    ) => {
        &[
            ("runtime.heapStatsDelta", "committed", $hs.committed),
            ("runtime.heapStatsDelta", "released", $hs.released),
            ("runtime.heapStatsDelta", "largeAlloc", $hs.large_alloc),
            ("runtime.heapStatsDelta", "largeAllocCount", $hs.large_alloc_count),
            ("runtime.heapStatsDelta", "largeFree", $hs.large_free),
            ("runtime.heapStatsDelta", "largeFreeCount", $hs.large_free_count),
            ("runtime.heapStatsDelta", "smallAllocCount", $hs.small_alloc_count),
            ("runtime.heapStatsDelta", "smallFreeCount", $hs.small_free_count),
            // The three generations' size: `gen` follows them.
            ("runtime.consistentHeapStats", "stats", 0),
            ("runtime.consistentHeapStats", "gen", 3 * $hs.size),
            ("runtime.mstats", MSTATS_SYS_NAMES[0], $sys[0]),
            ("runtime.mstats", MSTATS_SYS_NAMES[1], $sys[1]),
            ("runtime.mstats", MSTATS_SYS_NAMES[2], $sys[2]),
            ("runtime.mstats", MSTATS_SYS_NAMES[3], $sys[3]),
            ("runtime.mstats", MSTATS_SYS_NAMES[4], $sys[4]),
            ("runtime.mstats", MSTATS_SYS_NAMES[5], $sys[5]),
            ("runtime.gcControllerState", "gcPercent", $gc.gc_percent),
            ("runtime.gcControllerState", "memoryLimit", $gc.memory_limit),
            ("runtime.gcControllerState", "heapMarked", $gc.heap_marked),
            ("runtime.gcControllerState", "heapScan", $gc.heap_scan),
            ("runtime.gcControllerState", "lastStackScan", $gc.last_stack_scan),
            ("runtime.gcControllerState", "globalsScan", $gc.globals_scan),
            ("runtime.gcControllerState", "gcPercentHeapGoal", $gc.gc_percent_heap_goal),
            ("runtime.gcControllerState", "sweepDistMinTrigger", $gc.sweep_dist_min_trigger),
            ("runtime.gcControllerState", "triggered", $gc.triggered),
            ("runtime.gcControllerState", "heapFree", $gc.heap_free),
            ("runtime.gcControllerState", "totalAlloc", $gc.total_alloc),
            ("runtime.gcControllerState", "totalFree", $gc.total_free),
            ("runtime.gcControllerState", "mappedReady", $gc.mapped_ready),
            ("runtime.mstats", "numgc", $numgc),
            ("runtime.mstats", "numforcedgc", $numgc + 4),
            ("runtime.mstats", "heapStats", 0),
            ("runtime.schedt", "lock", $sched_lock),
            ("runtime.schedt", "timeToRun", $time_to_run),
            ("runtime.timeHistogram", "counts", 0),
            ("runtime.timeHistogram", "underflow", $histogram),
            $($more),*
        ]
    };
}

/// The first of `values`, if any: an optional macro argument as an `Option` in a constant.
const fn first(values: &[u64]) -> Option<u64> {
    match values {
        [value, ..] => Some(*value),
        [] => None,
    }
}

/// One row from Go 1.21 on. The goroutine counts come in two shapes: up to Go 1.24 `gFree` holds
/// a count `n` (`counted`), from 1.25 its two lists carry sizes (`listed`), and from 1.26
/// `gcount()` no longer leaves out system goroutines (no `ngsys`). Each shape gives both the
/// offsets read and the DWARF facts that check them.
macro_rules! row {
    (
        $first:expr, $last:expr, numgc $numgc:expr, cpu $cpu:expr, $members:expr,
        sched $sched_lock:expr, $time_to_run:expr,
        goroutines counted(gfree $gfree:expr, ngsys $ngsys:expr, p $p:expr),
        heap $hs:expr, $sys:expr, $source:expr
    ) => {
        row!(@row $first, $last, $numgc, $cpu, $members, $sched_lock, $time_to_run,
            GoroutineFields {
                sched_free: &[$gfree + 24],
                sched_ngsys: Some($ngsys),
                p_free: $p + 8,
            },
            [
                ("runtime.schedt", "gFree", $gfree),
                (SCHED_GFREE_GO119, "n", 24),
                ("runtime.schedt", "ngsys", $ngsys),
                ("runtime.p", "gFree", $p),
                (P_GFREE_GO119, "n", 8)
            ],
            $hs, $sys, $source)
    };
    (
        $first:expr, $last:expr, numgc $numgc:expr, cpu $cpu:expr, $members:expr,
        sched $sched_lock:expr, $time_to_run:expr,
        goroutines listed(gfree $gfree:expr, $(ngsys $ngsys:expr,)? p $p:expr),
        heap $hs:expr, $sys:expr, $source:expr
    ) => {
        row!(@row $first, $last, $numgc, $cpu, $members, $sched_lock, $time_to_run,
            GoroutineFields {
                sched_free: &[$gfree + 8 + 8, $gfree + 24 + 8],
                sched_ngsys: first(&[$($ngsys)?]),
                p_free: $p + 8,
            },
            [
                ("runtime.schedt", "gFree", $gfree),
                (SCHED_GFREE_GO125, "stack", 8),
                (SCHED_GFREE_GO125, "noStack", 24),
                ("runtime.gList", "size", 8),
                $(("runtime.schedt", "ngsys", $ngsys),)?
                ("runtime.p", "gFree", $p)
            ],
            $hs, $sys, $source)
    };
    (
        @row $first:expr, $last:expr, $numgc:expr, $cpu:expr, $members:expr,
        $sched_lock:expr, $time_to_run:expr, $goroutines:expr, [$($fact:expr),*],
        $hs:expr, $sys:expr, $source:expr
    ) => {
        VitalsAbi {
            first: $first,
            last: $last,
            gc_controller: GC_CONTROLLER_GO121,
            numgc: $numgc,
            numforcedgc: $numgc + 4,
            heap_stats: 0,
            cpu_stats: Some($cpu),
            sched_lock: $sched_lock,
            time_to_run: $time_to_run,
            latency_histogram: TimeHistogramLayout::Go121,
            goroutines: $goroutines,
            heap_stats_delta: $hs,
            sys: $sys,
            dwarf: DwarfFacts {
                members: &[("runtime.cpuStats", $members)],
                offsets: offsets!(
                    GC_CONTROLLER_GO121,
                    $numgc,
                    $sched_lock,
                    $time_to_run,
                    1280,
                    $hs,
                    $sys,
                    ("runtime.timeHistogram", "overflow", 1288),
                    ("runtime.workType", "cpuStats", $cpu)
                    $(, $fact)*
                ),
                params: &[],
            },
            source: $source,
        }
    };
}

/// Read from the DWARF of gcload built by each release (go1.19.8, go1.21.13, go1.22.10,
/// go1.23.9, go1.24.11, go1.25.5, go1.26.6, go1.27.3); the fields are declared in
/// src/runtime/mgcpacer.go (`gcControllerState`), mstats.go (`mstats`, `cpuStats`), mgc.go
/// (`workType`), runtime2.go (`schedt`, `p`, `gList`), proc.go (`gcount`) and histogram.go
/// (`timeHistogram`) of each.
pub const VITALS_TABLE: &[VitalsAbi] = &[
    VitalsAbi {
        first: (1, 19),
        last: (1, 19),
        gc_controller: GC_CONTROLLER_GO119,
        numgc: 7704,
        numforcedgc: 7708,
        heap_stats: 0,
        cpu_stats: None,
        sched_lock: 24,
        time_to_run: 312,
        latency_histogram: TimeHistogramLayout::Go119,
        goroutines: GoroutineFields {
            sched_free: &[152 + 24],
            sched_ngsys: Some(72),
            p_free: 2464 + 8,
        },
        heap_stats_delta: HEAP_STATS_GO119,
        sys: MSTATS_SYS_GO119,
        dwarf: DwarfFacts {
            members: &[],
            offsets: offsets!(
                GC_CONTROLLER_GO119,
                7704,
                24,
                312,
                5760,
                HEAP_STATS_GO119,
                MSTATS_SYS_GO119,
                ("runtime.schedt", "gFree", 152),
                (SCHED_GFREE_GO119, "n", 24),
                ("runtime.schedt", "ngsys", 72),
                ("runtime.p", "gFree", 2464),
                (P_GFREE_GO119, "n", 8)
            ),
            params: &[],
        },
        source: "go1.19.8 src/runtime/mgcpacer.go, mstats.go, runtime2.go, proc.go, \
                 histogram.go: no cpuStats yet",
    },
    row!(
        (1, 21), (1, 21), numgc 7704, cpu 488, CPU_STATS_MEMBERS_GO121, sched 24, 320,
        goroutines counted(gfree 160, ngsys 72, p 2464),
        heap HEAP_STATS_GO119, MSTATS_SYS_GO119,
        "go1.21.13 src/runtime/mgcpacer.go, mstats.go, mgc.go, runtime2.go, proc.go, histogram.go"
    ),
    row!(
        (1, 22), (1, 22), numgc 7704, cpu 480, CPU_STATS_MEMBERS_GO121, sched 24, 320,
        goroutines counted(gfree 160, ngsys 72, p 2464),
        heap HEAP_STATS_GO119, MSTATS_SYS_GO119,
        "go1.22.10 src/runtime/mgcpacer.go, mstats.go, mgc.go, runtime2.go, proc.go, histogram.go"
    ),
    row!(
        (1, 23), (1, 24), numgc 7704, cpu 504, CPU_STATS_MEMBERS_GO123, sched 24, 320,
        goroutines counted(gfree 160, ngsys 72, p 2456),
        heap HEAP_STATS_GO119, MSTATS_SYS_GO119,
        "go1.23.9, go1.24.11 src/runtime/mgcpacer.go, mstats.go, mgc.go, runtime2.go, proc.go, \
         histogram.go"
    ),
    row!(
        (1, 25), (1, 25), numgc 7680, cpu 592, CPU_STATS_MEMBERS_GO123, sched 32, 344,
        goroutines listed(gfree 168, ngsys 80, p 2456),
        heap HEAP_STATS_GO125, MSTATS_SYS_GO125,
        "go1.25.5 src/runtime/mgcpacer.go, mstats.go, mgc.go, runtime2.go, proc.go, histogram.go"
    ),
    // /sched/goroutines is gcount(includeSys = true): system goroutines count.
    row!(
        (1, 26), (1, 27), numgc 7680, cpu 728, CPU_STATS_MEMBERS_GO123, sched 32, 360,
        goroutines listed(gfree 184, p 2464),
        heap HEAP_STATS_GO125, MSTATS_SYS_GO125,
        "go1.26.6, go1.27.3 src/runtime/mgcpacer.go, mstats.go, mgc.go, runtime2.go, proc.go, \
         histogram.go"
    ),
];

/// What mapscope can do for a release: a row it knows, the newest row for a release newer than
/// the table (usable only where the binary's DWARF confirms it), or nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VitalsSupport {
    Known(&'static VitalsAbi),
    /// Newer than the table: the newest row, trusted only if the binary's DWARF agrees.
    Unverified(&'static VitalsAbi),
    None,
}

pub fn vitals_abi(version: GoVersion) -> VitalsSupport {
    let release = version.release();
    if release < OLDEST_SUPPORTED {
        return VitalsSupport::None;
    }
    if let Some(row) = super::row_for(VITALS_TABLE, release) {
        return VitalsSupport::Known(row);
    }
    match super::newest_for(VITALS_TABLE, release) {
        Some(newest) => VitalsSupport::Unverified(newest),
        None => VitalsSupport::None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_supported_release_has_exactly_one_row() {
        super::super::tests::each_supported_release_has_one_row(VITALS_TABLE);
        assert!(matches!(
            vitals_abi(GoVersion::new(1, 28, 0)),
            VitalsSupport::Unverified(_)
        ));
        assert_eq!(vitals_abi(GoVersion::new(1, 20, 3)), VitalsSupport::None);
    }

    #[test]
    fn the_dwarf_facts_state_the_offsets_read() {
        for row in VITALS_TABLE {
            let stated = |ty: &str, member: &str| {
                row.dwarf
                    .offsets
                    .iter()
                    .find(|&&(t, m, _)| t == ty && m == member)
                    .map(|&(_, _, offset)| offset)
            };
            let gc = row.gc_controller;
            assert_eq!(
                stated("runtime.gcControllerState", "heapMarked"),
                Some(gc.heap_marked)
            );
            assert_eq!(
                stated("runtime.gcControllerState", "gcPercent"),
                Some(gc.gc_percent)
            );
            assert_eq!(stated("runtime.mstats", "numgc"), Some(row.numgc));
            assert_eq!(
                stated("runtime.mstats", "numforcedgc"),
                Some(row.numforcedgc)
            );
            assert_eq!(stated("runtime.workType", "cpuStats"), row.cpu_stats);
            // The reader takes both counts in one word.
            assert_eq!(row.numforcedgc, row.numgc + 4);
            // The goroutine counts are read where the stated struct offsets put them.
            let gfree = stated("runtime.schedt", "gFree").unwrap();
            let expected_free = match stated(SCHED_GFREE_GO119, "n") {
                Some(n) => vec![gfree + n],
                None => {
                    let size = stated("runtime.gList", "size").unwrap();
                    vec![
                        gfree + stated(SCHED_GFREE_GO125, "stack").unwrap() + size,
                        gfree + stated(SCHED_GFREE_GO125, "noStack").unwrap() + size,
                    ]
                }
            };
            assert_eq!(row.goroutines.sched_free, expected_free, "{:?}", row.first);
            let p_count = stated(P_GFREE_GO119, "n").or(stated("runtime.gList", "size"));
            assert_eq!(
                Some(row.goroutines.p_free),
                stated("runtime.p", "gFree")
                    .zip(p_count)
                    .map(|(at, count)| at + count)
            );
            // gcount() leaves system goroutines out up to Go 1.25.
            assert_eq!(row.goroutines.sched_ngsys.is_some(), row.last <= (1, 25));
            if let Some(ngsys) = row.goroutines.sched_ngsys {
                assert_eq!(stated("runtime.schedt", "ngsys"), Some(ngsys));
            }
        }
    }
}
