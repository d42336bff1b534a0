//! Every vital: its runtime/metrics name, kind, the releases it exists on, its Prometheus name
//! (the Go client's rule) and how its value comes from the raw fields.

use super::{Cumulative, RawVitals, cumulative, latency_bounds};

/// Where a vital's value comes from: a raw field, or the runtime's arithmetic on several.
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

/// The runtime global a vital is read from (several for the goroutine count).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Needs {
    GcController,
    Memstats,
    Work,
    Gomaxprocs,
    Sched,
    /// `sched`, `allglen` and `allp`.
    Goroutines,
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
            Source::HeapGoal => raw.heap_goal?.goal()? as f64,
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

    /// The global it is read from.
    pub fn needs(&self) -> Needs {
        match self.source {
            Source::GcPercent
            | Source::MemoryLimit
            | Source::HeapMarked
            | Source::Scan(_)
            | Source::ScanTotal
            | Source::HeapGoal => Needs::GcController,
            Source::CyclesTotal
            | Source::CyclesForced
            | Source::CyclesAutomatic
            | Source::HeapTotals(_)
            | Source::HeapObjects
            | Source::TotalMemory
            | Source::HeapReleased => Needs::Memstats,
            Source::Cpu(_) => Needs::Work,
            Source::Gomaxprocs => Needs::Gomaxprocs,
            Source::SchedLatencies => Needs::Sched,
            Source::Goroutines => Needs::Goroutines,
        }
    }

    /// Whether a release's runtime has the fields this vital is computed from, and mapscope
    /// exports it there.
    pub fn exported_for(&self, release: (u32, u32)) -> bool {
        release >= self.computed_from
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

#[cfg(test)]
mod tests {
    use super::{super::*, *};

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
        assert!(super::super::sanitize(&mut raw.clone()).is_empty());
        let missing = RawVitals::default();
        assert!(VITALS.iter().all(|vital| vital.value(&missing).is_none()));
    }

    /// docs/METRICS.md's vitals table has every series, with its runtime/metrics name.
    #[test]
    fn every_vital_is_documented() {
        let docs = include_str!("../../../../docs/METRICS.md");
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
        // Go 1.19: no CPU classes (no cpuStats in its runtime) and none of the metrics its
        // runtime/metrics lacks without a public API to check them (live heap, scan sizes);
        // everything else, GOGC and GOMEMLIMIT included.
        for vital in VITALS {
            let on_119 = vital.exported_for((1, 19));
            let lacking = vital.name.starts_with("/cpu/")
                || vital.name.starts_with("/gc/scan/")
                || vital.name == "/gc/heap/live:bytes";
            assert_eq!(on_119, !lacking, "{}", vital.name);
            assert!(vital.exported_for((1, 21)), "{}", vital.name);
            assert!(vital.since <= (1, 21) && vital.computed_from <= vital.since.max((1, 19)));
        }
    }
}
