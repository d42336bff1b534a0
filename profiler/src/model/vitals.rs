//! The Go runtime's vitals: which runtime/metrics series mapscope reproduces from the fields it
//! reads out of a target's memory, the Prometheus name each gets, and the arithmetic that turns
//! the raw fields into the runtime's own value.

/// The raw fields, as read from one target at one moment; `None` where the global holding the
/// field was not found or the release has no such field.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RawVitals {
    /// `gcController.gcPercent` (GOGC; -1 when off).
    pub gc_percent: Option<i32>,
    /// `gcController.memoryLimit` (GOMEMLIMIT, bytes).
    pub memory_limit: Option<i64>,
    /// `gcController.heapMarked`.
    pub heap_marked: Option<u64>,
    /// `gcController.heapScan`, `lastStackScan`, `globalsScan`.
    pub scan: Option<[u64; 3]>,
    /// `memstats.numgc`, `memstats.numforcedgc`.
    pub cycles: Option<(u32, u32)>,
    /// `work.cpuStats`, nanoseconds, in `CpuClass` order.
    pub cpu: Option<[i64; CPU_CLASSES]>,
    /// `gomaxprocs`.
    pub gomaxprocs: Option<i32>,
    /// `sched.timeToRun`, as runtime/metrics gives it (`TimeHistogramLayout::metric_counts`),
    /// with its edges.
    pub sched_latencies: Option<(TimeHistogramLayout, Vec<u64>)>,
    pub goroutines: Option<GoroutineCounts>,
    pub heap_goal: Option<HeapGoalInputs>,
    pub heap: Option<HeapStats>,
}

/// `memstats.heapStats` with its three generations summed (what `consistentHeapStats.read`
/// hands runtime/metrics), and the `mstats` system memory the memory classes add.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeapStats {
    pub committed: i64,
    pub released: i64,
    pub large_alloc: u64,
    pub large_alloc_count: u64,
    pub large_free: u64,
    pub large_free_count: u64,
    pub small_alloc_count: Vec<u64>,
    pub small_free_count: Vec<u64>,
    /// Bytes per object of each size class.
    pub class_bytes: &'static [u16],
    /// `stacks_sys`, `mspan_sys`, `mcache_sys`, `buckhash_sys`, `gcMiscSys`, `other_sys`.
    pub sys: [u64; 6],
}

impl HeapStats {
    /// `heapStatsAggregate.compute`: allocated bytes, allocations, freed bytes, frees (in
    /// uint64, wrapping like the runtime's).
    pub fn totals(&self) -> [u64; 4] {
        let mut allocated = self.large_alloc;
        let mut allocs = self.large_alloc_count;
        let mut freed = self.large_free;
        let mut frees = self.large_free_count;
        for ((&alloc, &free), &bytes) in self
            .small_alloc_count
            .iter()
            .zip(&self.small_free_count)
            .zip(self.class_bytes)
        {
            allocs = allocs.wrapping_add(alloc);
            frees = frees.wrapping_add(free);
            allocated = allocated.wrapping_add(alloc.wrapping_mul(u64::from(bytes)));
            freed = freed.wrapping_add(free.wrapping_mul(u64::from(bytes)));
        }
        [allocated, allocs, freed, frees]
    }

    /// `/memory/classes/total`: `uint64(committed + released)` plus the system memory.
    pub fn total_memory(&self) -> u64 {
        let heap = self.committed.wrapping_add(self.released) as u64;
        self.sys
            .iter()
            .fold(heap, |total, &sys| total.wrapping_add(sys))
    }
}

/// What `gcControllerState.heapGoal()` computes the heap goal from (src/runtime/mgcpacer.go,
/// the same code from Go 1.19 to 1.27 but for the headroom).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HeapGoalInputs {
    pub gc_percent_heap_goal: u64,
    pub sweep_dist_min_trigger: u64,
    pub triggered: u64,
    pub heap_free: u64,
    pub total_alloc: u64,
    pub total_free: u64,
    pub mapped_ready: u64,
    pub memory_limit: u64,
    pub heap_marked: u64,
    /// `memoryLimitHeapGoalHeadroomPercent`; 0 on Go 1.19 (a fixed 1 MiB).
    pub headroom_percent: u64,
}

impl HeapGoalInputs {
    /// `heapGoalInternal()`'s goal: the GOGC goal, or the memory limit's if lower; otherwise
    /// raised to the sweep-distance trigger and to 64 KiB past the trigger that fired.
    pub fn goal(&self) -> u64 {
        let mut goal = self.gc_percent_heap_goal;
        let limited = self.memory_limit_goal();
        if limited < goal {
            return limited;
        }
        goal = goal.max(self.sweep_dist_min_trigger);
        const MIN_RUNWAY: u64 = 64 << 10;
        if self.triggered != u64::MAX && goal < self.triggered.wrapping_add(MIN_RUNWAY) {
            goal = self.triggered.wrapping_add(MIN_RUNWAY);
        }
        goal
    }

    /// `memoryLimitHeapGoal()`, in the runtime's unsigned arithmetic.
    fn memory_limit_goal(&self) -> u64 {
        const MIN_HEADROOM: u64 = 1 << 20;
        let heap_alloc = self.total_alloc.wrapping_sub(self.total_free);
        let non_heap = self
            .mapped_ready
            .wrapping_sub(self.heap_free)
            .wrapping_sub(heap_alloc);
        let overage = self.mapped_ready.saturating_sub(self.memory_limit);
        if non_heap.wrapping_add(overage) >= self.memory_limit {
            return self.heap_marked;
        }
        let mut goal = self.memory_limit - (non_heap + overage);
        let headroom = (goal / 100 * self.headroom_percent).max(MIN_HEADROOM);
        if goal < headroom || goal - headroom < headroom {
            goal = headroom;
        } else {
            goal -= headroom;
        }
        goal.max(self.heap_marked)
    }
}

/// What `gcount()` adds up (src/runtime/proc.go).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GoroutineCounts {
    /// `allglen`: goroutines ever made (live, dead or free).
    pub allglen: u64,
    /// Free goroutines held by the scheduler, and by each P.
    pub sched_free: Vec<i32>,
    pub p_free: Vec<i32>,
    /// `sched.ngsys`, where the release leaves system goroutines out.
    pub system: Option<i32>,
}

impl GoroutineCounts {
    /// `gcount()`: in int32 as the runtime computes it, and at least 1 ("at least the current
    /// goroutine is running").
    pub fn count(&self) -> i32 {
        let mut n = self.allglen as i32;
        for free in self.sched_free.iter().chain(&self.p_free) {
            n = n.wrapping_sub(*free);
        }
        if let Some(system) = self.system {
            n = n.wrapping_sub(system);
        }
        n.max(1)
    }
}

/// How a release keeps a `runtime.timeHistogram` (src/runtime/histogram.go).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeHistogramLayout {
    /// Go 1.19: `counts [45 * 16]uint64; underflow uint64`.
    Go119,
    /// Go 1.21 and later: `counts [40 * 4]atomic.Uint64; underflow, overflow atomic.Uint64`.
    Go121,
}

impl TimeHistogramLayout {
    /// How many `uint64` words the histogram is: its counts, then underflow (and overflow).
    pub fn words(self) -> usize {
        match self {
            Self::Go119 => 45 * 16 + 1,
            Self::Go121 => 40 * 4 + 2,
        }
    }

    /// The bucket edges runtime/metrics gives this histogram, in seconds, as
    /// `timeHistogramMetricsBuckets` computes them: `words() + 1` edges from -Inf to +Inf.
    /// Bucket `i` is `[edge i, edge i+1)`; the first holds the underflow, and (Go 1.21+) the
    /// last the overflow.
    pub fn edges(self) -> Vec<f64> {
        let mut edges = vec![f64::NEG_INFINITY];
        match self {
            Self::Go119 => {
                // timeHistSubBucketBits = 4, timeHistNumSuperBuckets = 45.
                edges.extend((0..16u64).map(|j| j as f64 / 1e9));
                for i in 0..44u64 {
                    for j in 0..16u64 {
                        edges.push(((1u64 << (i + 4)) | (j << i)) as f64 / 1e9);
                    }
                }
            }
            Self::Go121 => {
                // timeHistMinBucketBits = 9, timeHistMaxBucketBits = 48,
                // timeHistSubBucketBits = 2.
                edges.extend((0..4u64).map(|j| (j << 6) as f64 / 1e9));
                for i in 9..48u64 {
                    for j in 0..4u64 {
                        edges.push(((1u64 << (i - 1)) | (j << (i - 3))) as f64 / 1e9);
                    }
                }
                edges.push((1u64 << 47) as f64 / 1e9);
            }
        }
        edges.push(f64::INFINITY);
        edges
    }

    /// The runtime/metrics counts (underflow first, then the counts, then any overflow) from
    /// the histogram's words as they lie in memory (counts first).
    pub fn metric_counts(self, words: &[u64]) -> Vec<u64> {
        let counts = match self {
            Self::Go119 => 45 * 16,
            Self::Go121 => 40 * 4,
        };
        let mut out = Vec::with_capacity(words.len());
        out.extend(words.get(counts).copied());
        out.extend(words.iter().take(counts).copied());
        if self == Self::Go121 {
            out.extend(words.get(counts + 1).copied());
        }
        out
    }
}

/// The upper bounds mapscope exports scheduling latencies in (seconds): powers of two
/// nanoseconds from 256 ns to 68.7 s, each an edge of the runtime's own buckets on every
/// release, so each cumulative count is a sum of whole runtime buckets, exactly.
pub fn latency_bounds() -> Vec<f64> {
    (8..=36).map(|bits| (1u64 << bits) as f64 / 1e9).collect()
}

/// A runtime histogram summed into `bounds` (Prometheus's cumulative `le` buckets, +Inf
/// implied): the count of runtime buckets whose upper edge is at or below each bound. The sum
/// is a lower bound, each observation at its bucket's lower edge (at least 0): the runtime keeps
/// none.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Cumulative {
    pub buckets: Vec<(f64, u64)>,
    pub count: u64,
    pub sum: f64,
}

pub fn cumulative(edges: &[f64], counts: &[u64], bounds: &[f64]) -> Cumulative {
    let mut out = Cumulative::default();
    let mut bucket = 0;
    for &bound in bounds {
        while bucket < counts.len() && edges.get(bucket + 1).is_some_and(|&upper| upper <= bound) {
            out.count += counts[bucket];
            bucket += 1;
        }
        out.buckets.push((bound, out.count));
    }
    out.count = counts.iter().sum();
    out.sum = counts
        .iter()
        .zip(edges)
        .map(|(&count, &lower)| count as f64 * lower.max(0.0))
        .sum();
    out
}

/// `runtime.cpuStats`'s fields, in the order `gobin::abi::CPU_STATS` lays them out.
pub const CPU_CLASSES: usize = 11;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Source {
    GcPercent,
    MemoryLimit,
    HeapMarked,
    Scan(usize),
    ScanTotal,
    CyclesTotal,
    CyclesForced,
    CyclesAutomatic,
    /// Index into `RawVitals::cpu`.
    Cpu(usize),
    Gomaxprocs,
    SchedLatencies,
    Goroutines,
    HeapGoal,
    /// Index into `HeapStats::totals`.
    HeapTotals(usize),
    HeapObjects,
    TotalMemory,
    HeapReleased,
}

/// What kind of series a vital is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Gauge,
    /// runtime/metrics `Cumulative`: a Prometheus counter.
    Counter,
    /// A runtime/metrics `Float64Histogram`.
    Histogram,
}

/// One runtime/metrics series mapscope reproduces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Vital {
    /// The runtime/metrics name.
    pub name: &'static str,
    pub kind: Kind,
    /// The first Go release whose runtime/metrics has it.
    pub since: (u32, u32),
    /// The oldest release mapscope exports it for: earlier than `since` where the runtime
    /// already had the field and a public API to check it against (`runtime.GOMAXPROCS`,
    /// `debug.SetGCPercent`, `debug.SetMemoryLimit`, `MemStats.NumForcedGC`).
    pub computed_from: (u32, u32),
    pub help: &'static str,
    source: Source,
}

const fn vital(
    name: &'static str,
    kind: Kind,
    since: (u32, u32),
    computed_from: (u32, u32),
    help: &'static str,
    source: Source,
) -> Vital {
    Vital {
        name,
        kind,
        since,
        computed_from,
        help,
        source,
    }
}

const GO119: (u32, u32) = (1, 19);
const GO120: (u32, u32) = (1, 20);
const GO121: (u32, u32) = (1, 21);

/// Every vital, with its runtime/metrics description (abridged).
pub const VITALS: &[Vital] = &[
    vital(
        "/gc/gogc:percent",
        Kind::Gauge,
        GO121,
        GO119,
        "Heap size target percentage configured by the user (GOGC); 2^64-1 when off, as the runtime reports it.",
        Source::GcPercent,
    ),
    vital(
        "/gc/gomemlimit:bytes",
        Kind::Gauge,
        GO121,
        GO119,
        "Go runtime memory limit configured by the user (GOMEMLIMIT).",
        Source::MemoryLimit,
    ),
    vital(
        "/gc/heap/goal:bytes",
        Kind::Gauge,
        (1, 16),
        GO119,
        "Heap size target for the end of the GC cycle (from GOGC, or lower under GOMEMLIMIT).",
        Source::HeapGoal,
    ),
    vital(
        "/gc/heap/allocs:bytes",
        Kind::Counter,
        (1, 16),
        GO119,
        "Cumulative sum of memory allocated to the heap by the application (exact; \
         mapscope_alloc_bytes_total is the sampled estimate with sites).",
        Source::HeapTotals(0),
    ),
    vital(
        "/gc/heap/allocs:objects",
        Kind::Counter,
        (1, 16),
        GO119,
        "Cumulative count of heap allocations triggered by the application (exact).",
        Source::HeapTotals(1),
    ),
    vital(
        "/gc/heap/frees:bytes",
        Kind::Counter,
        (1, 16),
        GO119,
        "Cumulative sum of heap memory freed by the garbage collector.",
        Source::HeapTotals(2),
    ),
    vital(
        "/gc/heap/frees:objects",
        Kind::Counter,
        (1, 16),
        GO119,
        "Cumulative count of heap allocations whose storage was freed by the garbage collector.",
        Source::HeapTotals(3),
    ),
    vital(
        "/memory/classes/heap/objects:bytes",
        Kind::Gauge,
        (1, 16),
        GO119,
        "Memory occupied by live objects and dead objects that have not yet been marked free \
         by the garbage collector.",
        Source::HeapObjects,
    ),
    vital(
        "/memory/classes/total:bytes",
        Kind::Gauge,
        (1, 16),
        GO119,
        "All memory mapped by the Go runtime into the current process as read-write.",
        Source::TotalMemory,
    ),
    vital(
        "/memory/classes/heap/released:bytes",
        Kind::Gauge,
        (1, 16),
        GO119,
        "Memory that is completely free and has been returned to the underlying system \
         (with /memory/classes/total, what OpenTelemetry's go.memory.used subtracts).",
        Source::HeapReleased,
    ),
    vital(
        "/gc/heap/live:bytes",
        Kind::Gauge,
        GO121,
        GO121,
        "Heap memory occupied by live objects that were marked by the previous GC.",
        Source::HeapMarked,
    ),
    vital(
        "/gc/scan/heap:bytes",
        Kind::Gauge,
        GO121,
        GO121,
        "The amount of heap space that is scannable.",
        Source::Scan(0),
    ),
    vital(
        "/gc/scan/stack:bytes",
        Kind::Gauge,
        GO121,
        GO121,
        "The number of bytes of stack that were scanned last GC cycle.",
        Source::Scan(1),
    ),
    vital(
        "/gc/scan/globals:bytes",
        Kind::Gauge,
        GO121,
        GO121,
        "The total amount of global variable space that is scannable.",
        Source::Scan(2),
    ),
    vital(
        "/gc/scan/total:bytes",
        Kind::Gauge,
        GO121,
        GO121,
        "The total amount space that is scannable (heap, stacks and globals).",
        Source::ScanTotal,
    ),
    vital(
        "/gc/cycles/total:gc-cycles",
        Kind::Counter,
        (1, 17),
        GO119,
        "Count of all completed GC cycles.",
        Source::CyclesTotal,
    ),
    vital(
        "/gc/cycles/forced:gc-cycles",
        Kind::Counter,
        (1, 17),
        GO119,
        "Count of completed GC cycles forced by the application (runtime.GC, debug.FreeOSMemory).",
        Source::CyclesForced,
    ),
    vital(
        "/gc/cycles/automatic:gc-cycles",
        Kind::Counter,
        (1, 17),
        GO119,
        "Count of completed GC cycles generated by the Go runtime.",
        Source::CyclesAutomatic,
    ),
    vital(
        "/sched/gomaxprocs:threads",
        Kind::Gauge,
        GO120,
        GO119,
        "The current runtime.GOMAXPROCS setting.",
        Source::Gomaxprocs,
    ),
    vital(
        "/sched/goroutines:goroutines",
        Kind::Gauge,
        (1, 16),
        GO119,
        "Count of live goroutines (from Go 1.26 including the runtime's own).",
        Source::Goroutines,
    ),
    vital(
        "/sched/latencies:seconds",
        Kind::Histogram,
        (1, 17),
        GO119,
        "Distribution of the time goroutines have spent in the scheduler in a runnable state \
         before actually running (the runtime's own buckets, summed into powers of two; the \
         sum is a lower bound, each at its bucket's lower edge).",
        Source::SchedLatencies,
    ),
    vital(
        "/cpu/classes/gc/mark/assist:cpu-seconds",
        Kind::Counter,
        GO120,
        GO120,
        "Estimated total CPU time goroutines spent performing GC tasks to assist the GC.",
        Source::Cpu(0),
    ),
    vital(
        "/cpu/classes/gc/mark/dedicated:cpu-seconds",
        Kind::Counter,
        GO120,
        GO120,
        "Estimated total CPU time spent performing GC tasks on processors dedicated to them.",
        Source::Cpu(1),
    ),
    vital(
        "/cpu/classes/gc/mark/idle:cpu-seconds",
        Kind::Counter,
        GO120,
        GO120,
        "Estimated total CPU time spent performing GC tasks on spare CPU resources.",
        Source::Cpu(2),
    ),
    vital(
        "/cpu/classes/gc/pause:cpu-seconds",
        Kind::Counter,
        GO120,
        GO120,
        "Estimated total CPU time spent with the application paused by the GC (pause time × GOMAXPROCS).",
        Source::Cpu(3),
    ),
    vital(
        "/cpu/classes/gc/total:cpu-seconds",
        Kind::Counter,
        GO120,
        GO120,
        "Estimated total CPU time spent performing GC tasks.",
        Source::Cpu(4),
    ),
    vital(
        "/cpu/classes/scavenge/assist:cpu-seconds",
        Kind::Counter,
        GO120,
        GO120,
        "Estimated total CPU time spent returning unused memory to the OS eagerly.",
        Source::Cpu(5),
    ),
    vital(
        "/cpu/classes/scavenge/background:cpu-seconds",
        Kind::Counter,
        GO120,
        GO120,
        "Estimated total CPU time spent returning unused memory to the OS in the background.",
        Source::Cpu(6),
    ),
    vital(
        "/cpu/classes/scavenge/total:cpu-seconds",
        Kind::Counter,
        GO120,
        GO120,
        "Estimated total CPU time spent returning unused memory to the OS.",
        Source::Cpu(7),
    ),
    vital(
        "/cpu/classes/idle:cpu-seconds",
        Kind::Counter,
        GO120,
        GO120,
        "Estimated total available CPU time not spent executing any Go or Go runtime code.",
        Source::Cpu(8),
    ),
    vital(
        "/cpu/classes/user:cpu-seconds",
        Kind::Counter,
        GO120,
        GO120,
        "Estimated total CPU time spent running user Go code.",
        Source::Cpu(9),
    ),
    vital(
        "/cpu/classes/total:cpu-seconds",
        Kind::Counter,
        GO120,
        GO120,
        "Estimated total available CPU time for user Go code or the Go runtime (GOMAXPROCS × wall time).",
        Source::Cpu(10),
    ),
];

impl Vital {
    /// The series name: the rule of the Prometheus Go client's runtime/metrics collector
    /// (`internal.RuntimeMetricsToProm` in prometheus/client_golang), with `mapscope_` in front.
    /// `/a/b/c:unit` is namespace `go`, subsystem `a_b` (the path but its last element, with
    /// `/` and `-` as `_`), name `c_unit` (`-` as `_` in both; in the unit `*` is `_` and `/`
    /// is `_per_`), and `_total` after a cumulative series that is not a histogram.
    pub fn prometheus_name(&self) -> String {
        prometheus_name(self.name, self.kind == Kind::Counter)
    }

    /// This vital's value in `raw`, as runtime/metrics computes it; `None` when `raw` lacks
    /// the fields.
    pub fn value(&self, raw: &RawVitals) -> Option<f64> {
        Some(match self.source {
            // uint64(gcController.gcPercent.Load()): GOGC=off (-1) is 2^64-1.
            Source::GcPercent => i64::from(raw.gc_percent?) as u64 as f64,
            Source::MemoryLimit => raw.memory_limit? as u64 as f64,
            Source::HeapMarked => raw.heap_marked? as f64,
            Source::Scan(index) => raw.scan?[index] as f64,
            Source::ScanTotal => {
                let [heap, stack, globals] = raw.scan?;
                heap.wrapping_add(stack).wrapping_add(globals) as f64
            }
            Source::CyclesTotal => f64::from(raw.cycles?.0),
            Source::CyclesForced => f64::from(raw.cycles?.1),
            Source::CyclesAutomatic => {
                let (total, forced) = raw.cycles?;
                u64::from(total).wrapping_sub(u64::from(forced)) as f64
            }
            // nsToSec: float64(ns) / 1e9.
            Source::Cpu(index) => raw.cpu?[index] as f64 / 1e9,
            Source::Gomaxprocs => raw.gomaxprocs? as u64 as f64,
            Source::SchedLatencies => return None,
            Source::Goroutines => f64::from(raw.goroutines.as_ref()?.count()),
            Source::HeapGoal => raw.heap_goal?.goal() as f64,
            Source::HeapTotals(index) => raw.heap.as_ref()?.totals()[index] as f64,
            Source::HeapObjects => {
                let [allocated, _, freed, _] = raw.heap.as_ref()?.totals();
                allocated.wrapping_sub(freed) as f64
            }
            Source::TotalMemory => raw.heap.as_ref()?.total_memory() as f64,
            Source::HeapReleased => raw.heap.as_ref()?.released as u64 as f64,
        })
    }

    /// A histogram vital's buckets (`latency_bounds`) in `raw`.
    pub fn histogram(&self, raw: &RawVitals) -> Option<Cumulative> {
        match self.source {
            Source::SchedLatencies => {
                let (layout, counts) = raw.sched_latencies.as_ref()?;
                Some(cumulative(&layout.edges(), counts, &latency_bounds()))
            }
            _ => None,
        }
    }

    /// Whether a release's runtime has the fields this vital is computed from, and mapscope
    /// exports it there.
    pub fn exported_for(&self, release: (u32, u32)) -> bool {
        release >= self.computed_from
    }
}

/// What the exit summary says of the runtime over a session, from its vitals at attach and at
/// detach.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct RuntimeSummary {
    /// GC CPU time over all CPU time the runtime had (GOMAXPROCS × wall time), both as the
    /// runtime's CPU classes count them: updated at each cycle's end.
    pub gc_cpu_share: Option<f64>,
    pub heap_goal: Option<u64>,
    pub gogc: Option<i32>,
    pub memory_limit: Option<i64>,
}

impl RuntimeSummary {
    pub fn between(start: &RawVitals, end: &RawVitals) -> Self {
        let gc_cpu_share = start.cpu.zip(end.cpu).and_then(|(start, end)| {
            let total = end[10].saturating_sub(start[10]);
            (total > 0).then(|| end[4].saturating_sub(start[4]) as f64 / total as f64)
        });
        Self {
            gc_cpu_share,
            heap_goal: end.heap_goal.map(|inputs| inputs.goal()),
            gogc: end.gc_percent,
            memory_limit: end.memory_limit,
        }
    }
}

/// See `Vital::prometheus_name`; `counter`: cumulative and not a histogram.
pub fn prometheus_name(runtime_name: &str, counter: bool) -> String {
    let (key, unit) = runtime_name.split_once(':').unwrap_or((runtime_name, ""));
    let key = key.trim_start_matches('/');
    let (subsystem, name) = key.rsplit_once('/').unwrap_or(("", key));
    let subsystem = subsystem.replace(['/', '-'], "_");
    let unit = unit.replace(['-', '*'], "_").replace('/', "_per_");
    let mut series = format!("mapscope_go_{subsystem}_{}_{unit}", name.replace('-', "_"));
    if counter {
        series.push_str("_total");
    }
    series
}

/// Sanity limits on what was read: a field read at a wrong address, or a layout that moved,
/// almost always breaks one of them. A target that fails them gets no vitals at all.
pub fn plausible(raw: &RawVitals) -> bool {
    let gomaxprocs = raw.gomaxprocs.is_none_or(|n| (1..=1 << 20).contains(&n));
    let gogc = raw.gc_percent.is_none_or(|percent| percent >= -1);
    let limit = raw.memory_limit.is_none_or(|limit| limit >= 0);
    let cycles = raw.cycles.is_none_or(|(total, forced)| forced <= total);
    let cpu = raw.cpu.is_none_or(|cpu| {
        let total = cpu[10];
        // Each GC class is within the GC total, which is within the total.
        cpu.iter().all(|&ns| ns >= 0) && cpu[..4].iter().all(|&ns| ns <= cpu[4]) && cpu[4] <= total
    });
    gomaxprocs && gogc && limit && cycles && cpu
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The examples, and the Prometheus Go client's own names for the same metrics
    /// (go_gc_cycles_total_gc_cycles_total, go_sched_gomaxprocs_threads,
    /// go_cpu_classes_gc_total_cpu_seconds_total, go_gc_gogc_percent).
    #[test]
    fn names_follow_the_prometheus_go_client_rule() {
        let name = |runtime_name: &str| {
            VITALS
                .iter()
                .find(|vital| vital.name == runtime_name)
                .unwrap()
                .prometheus_name()
        };
        assert_eq!(name("/gc/gogc:percent"), "mapscope_go_gc_gogc_percent");
        assert_eq!(
            name("/cpu/classes/gc/mark/assist:cpu-seconds"),
            "mapscope_go_cpu_classes_gc_mark_assist_cpu_seconds_total"
        );
        assert_eq!(
            name("/gc/cycles/total:gc-cycles"),
            "mapscope_go_gc_cycles_total_gc_cycles_total"
        );
        assert_eq!(
            name("/sched/gomaxprocs:threads"),
            "mapscope_go_sched_gomaxprocs_threads"
        );
        assert_eq!(
            prometheus_name("/gc/heap/goal:bytes", false),
            "mapscope_go_gc_heap_goal_bytes"
        );
        assert_eq!(
            prometheus_name("/sched/goroutines:goroutines", false),
            "mapscope_go_sched_goroutines_goroutines"
        );
        assert_eq!(
            prometheus_name("/sched/latencies:seconds", false),
            "mapscope_go_sched_latencies_seconds"
        );
        assert_eq!(
            prometheus_name("/gc/heap/allocs-by-size:bytes", false),
            "mapscope_go_gc_heap_allocs_by_size_bytes"
        );
        assert_eq!(
            prometheus_name("/memory/classes/heap/objects:bytes", false),
            "mapscope_go_memory_classes_heap_objects_bytes"
        );
        let mut names: Vec<String> = VITALS.iter().map(Vital::prometheus_name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), VITALS.len(), "names are unique");
    }

    #[test]
    fn values_are_computed_as_the_runtime_computes_them() {
        let raw = RawVitals {
            gc_percent: Some(-1),
            memory_limit: Some(i64::MAX),
            heap_marked: Some(4 << 20),
            scan: Some([100, 20, 3]),
            cycles: Some((40, 7)),
            cpu: Some([1, 2, 3, 4, 10, 0, 0, 0, 5, 6, 1_500_000_000]),
            gomaxprocs: Some(3),
            sched_latencies: None,
            goroutines: Some(GoroutineCounts {
                allglen: 20,
                sched_free: vec![3],
                p_free: vec![1, 2],
                system: Some(4),
            }),
            heap_goal: None,
            heap: None,
        };
        let value = |runtime_name: &str| {
            VITALS
                .iter()
                .find(|vital| vital.name == runtime_name)
                .unwrap()
                .value(&raw)
                .unwrap()
        };
        assert_eq!(value("/gc/gogc:percent"), u64::MAX as f64);
        assert_eq!(value("/gc/gomemlimit:bytes"), i64::MAX as f64);
        assert_eq!(value("/gc/scan/total:bytes"), 123.0);
        assert_eq!(value("/gc/cycles/automatic:gc-cycles"), 33.0);
        assert_eq!(value("/gc/cycles/forced:gc-cycles"), 7.0);
        assert_eq!(value("/cpu/classes/total:cpu-seconds"), 1.5);
        assert_eq!(value("/cpu/classes/gc/mark/assist:cpu-seconds"), 1e-9);
        assert_eq!(value("/sched/gomaxprocs:threads"), 3.0);
        assert_eq!(value("/sched/goroutines:goroutines"), 10.0);
        let all_free = GoroutineCounts {
            allglen: 4,
            sched_free: vec![4],
            ..GoroutineCounts::default()
        };
        assert_eq!(all_free.count(), 1, "gcount's floor");
        assert!(plausible(&raw));
        let missing = RawVitals::default();
        assert!(VITALS.iter().all(|vital| vital.value(&missing).is_none()));
    }

    #[test]
    fn implausible_readings_are_refused() {
        let good = RawVitals {
            gomaxprocs: Some(2),
            cycles: Some((5, 1)),
            ..RawVitals::default()
        };
        assert!(plausible(&good));
        for bad in [
            RawVitals {
                gomaxprocs: Some(0),
                ..good.clone()
            },
            RawVitals {
                cycles: Some((1, 5)),
                ..good.clone()
            },
            RawVitals {
                gc_percent: Some(-7),
                ..good.clone()
            },
            RawVitals {
                cpu: Some([0, 0, 0, 0, 10, 0, 0, 0, 0, 0, 5]),
                ..good.clone()
            },
        ] {
            assert!(!plausible(&bad), "{bad:?}");
        }
    }

    /// The edges are runtime/metrics' (`timeHistogramMetricsBuckets`, Go 1.19 and 1.21+):
    /// increasing, one more than the words, and every exported bound is one of them.
    #[test]
    fn latency_histogram_edges_are_the_runtimes() {
        for (layout, words) in [
            (TimeHistogramLayout::Go119, 721),
            (TimeHistogramLayout::Go121, 162),
        ] {
            let edges = layout.edges();
            assert_eq!(layout.words(), words);
            assert_eq!(edges.len(), words + 1);
            assert!(edges.windows(2).all(|pair| pair[0] < pair[1]), "{layout:?}");
            for bound in latency_bounds() {
                assert!(edges.contains(&bound), "{layout:?}: {bound}");
            }
        }
        let go121 = TimeHistogramLayout::Go121.edges();
        // [0, 64 ns), [64, 128), …, then 256 ns with four sub-buckets per power of two.
        assert_eq!(&go121[1..7], &[0.0, 64e-9, 128e-9, 192e-9, 256e-9, 320e-9]);
        assert_eq!(go121[161], (1u64 << 47) as f64 / 1e9);
        let go119 = TimeHistogramLayout::Go119.edges();
        assert_eq!(&go119[1..4], &[0.0, 1e-9, 2e-9]);
        assert_eq!(go119[17], 16e-9);
        // Counts in memory: the buckets, then underflow (and overflow); runtime/metrics puts
        // underflow first.
        let words: Vec<u64> = (0..162).collect();
        let counts = TimeHistogramLayout::Go121.metric_counts(&words);
        assert_eq!(counts.len(), 162);
        assert_eq!((counts[0], counts[1], counts[161]), (160, 0, 161));
    }

    #[test]
    fn histograms_sum_into_the_bounds_exactly() {
        // Buckets [-inf, 0), [0, 1), [1, 2), [2, 4), [4, inf).
        let edges = [f64::NEG_INFINITY, 0.0, 1.0, 2.0, 4.0, f64::INFINITY];
        let counts = [1, 2, 3, 4, 5];
        let out = cumulative(&edges, &counts, &[1.0, 2.0, 3.0, 4.0]);
        assert_eq!(out.buckets, vec![(1.0, 3), (2.0, 6), (3.0, 6), (4.0, 10)]);
        assert_eq!(out.count, 15);
        // Each at its lower edge, negatives at 0.
        assert_eq!(out.sum, 3.0 + 8.0 + 20.0);
    }

    /// The three ways `heapGoal()` ends: the GOGC goal raised to 64 KiB past the trigger, the
    /// memory limit's goal less its headroom, and the live heap when non-heap memory alone is
    /// over the limit.
    #[test]
    fn heap_goal_follows_the_runtime() {
        const MIB: u64 = 1 << 20;
        let gogc = HeapGoalInputs {
            gc_percent_heap_goal: 8 * MIB,
            sweep_dist_min_trigger: 0,
            triggered: 8 * MIB - 1,
            heap_free: MIB,
            total_alloc: 20 * MIB,
            total_free: 14 * MIB,
            mapped_ready: 10 * MIB,
            memory_limit: i64::MAX as u64,
            heap_marked: 4 * MIB,
            headroom_percent: 3,
        };
        assert_eq!(gogc.goal(), 8 * MIB - 1 + (64 << 10));
        // GOGC off, a 100 MiB limit: non-heap is 10 - 1 - 6 = 3 MiB; 97 MiB less 3% headroom.
        let limited = HeapGoalInputs {
            gc_percent_heap_goal: u64::MAX,
            memory_limit: 100 * MIB,
            ..gogc
        };
        let goal = 97 * MIB;
        assert_eq!(limited.goal(), goal - goal / 100 * 3);
        // Go 1.19: a fixed 1 MiB.
        let go119 = HeapGoalInputs {
            headroom_percent: 0,
            ..limited
        };
        assert_eq!(go119.goal(), goal - MIB);
        let over = HeapGoalInputs {
            memory_limit: 2 * MIB,
            ..limited
        };
        assert_eq!(over.goal(), 4 * MIB, "the live heap");
    }

    #[test]
    fn heap_totals_weigh_each_size_class() {
        let heap = HeapStats {
            committed: 10,
            released: -3,
            large_alloc: 100_000,
            large_alloc_count: 2,
            large_free: 40_000,
            large_free_count: 1,
            small_alloc_count: vec![0, 5, 2],
            small_free_count: vec![0, 1, 1],
            class_bytes: &[0, 8, 16],
            sys: [1, 2, 3, 4, 5, 6],
        };
        assert_eq!(
            heap.totals(),
            [100_000 + 40 + 32, 2 + 7, 40_000 + 8 + 16, 1 + 2]
        );
        assert_eq!(heap.total_memory(), 7 + 21);
    }

    #[test]
    fn the_summary_compares_attach_with_detach() {
        let at = |gc: i64, total: i64, cycles: u32| RawVitals {
            cpu: Some([0, 0, 0, 0, gc, 0, 0, 0, 0, 0, total]),
            cycles: Some((cycles, 0)),
            gc_percent: Some(100),
            ..RawVitals::default()
        };
        let summary = RuntimeSummary::between(&at(10, 100, 3), &at(40, 300, 9));
        assert_eq!(summary.gc_cpu_share, Some(0.15));
        assert_eq!(summary.gogc, Some(100));
        assert_eq!(summary.heap_goal, None);
        // No CPU time passed (no cycle ended): no share rather than a division by zero.
        let idle = RuntimeSummary::between(&at(10, 100, 3), &at(10, 100, 3));
        assert_eq!(idle.gc_cpu_share, None);
    }

    /// docs/METRICS.md's vitals table has every series, with its runtime/metrics name.
    #[test]
    fn every_vital_is_documented() {
        let docs = include_str!("../../../docs/METRICS.md");
        for vital in VITALS {
            let row = format!("| `{}` |", vital.prometheus_name());
            let line = docs
                .lines()
                .find(|line| line.starts_with(&row))
                .unwrap_or_else(|| panic!("{row} is not in docs/METRICS.md"));
            assert!(line.contains(&format!("`{}`", vital.name)), "{line}");
        }
    }

    #[test]
    fn releases_get_what_their_runtime_has() {
        let exported = |release| {
            VITALS
                .iter()
                .filter(|vital| vital.exported_for(release))
                .count()
        };
        assert_eq!(exported((1, 19)), 16);
        assert_eq!(exported((1, 21)), VITALS.len());
    }
}
