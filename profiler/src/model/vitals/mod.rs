//! The Go runtime's vitals: which runtime/metrics series mapscope reproduces from the fields it
//! reads out of a target's memory, the Prometheus name each gets, and the arithmetic that turns
//! the raw fields into the runtime's own value.
mod catalogue;
mod heap;
mod sched;
mod summary;

pub use catalogue::{Kind, Needs, VITALS, Vital, prometheus_name};
pub use heap::{HeapGoalInputs, HeapStats};
pub use sched::{Cumulative, GoroutineCounts, TimeHistogramLayout, cumulative, latency_bounds};
pub use summary::RuntimeSummary;

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

/// `runtime.cpuStats`'s fields, in the order `gobin::abi::CPU_STATS` lays them out.
pub const CPU_CLASSES: usize = 11;

/// Sanity limits on what was read: a field read at a wrong address (a global misidentified in
/// a stripped binary, a layout that moved) almost always breaks one of them. Each group that
/// fails is cleared, so that one bad global does not take the others with it; returns the
/// groups cleared.
pub fn sanitize(raw: &mut RawVitals) -> Vec<&'static str> {
    let mut cleared = Vec::new();
    let mut check = |ok: bool, name: &'static str, clear: &mut dyn FnMut()| {
        if !ok {
            clear();
            cleared.push(name);
        }
    };
    let gomaxprocs = raw.gomaxprocs.is_none_or(|n| (1..=1 << 20).contains(&n));
    check(gomaxprocs, "gomaxprocs", &mut || raw.gomaxprocs = None);
    // GOGC is -1 (off) or more; the memory limit is never negative.
    let settings = raw.gc_percent.is_none_or(|percent| percent >= -1)
        && raw.memory_limit.is_none_or(|limit| limit >= 0);
    check(settings, "gcController", &mut || {
        raw.gc_percent = None;
        raw.memory_limit = None;
        raw.heap_marked = None;
        raw.scan = None;
        raw.heap_goal = None;
    });
    let cycles = raw.cycles.is_none_or(|(total, forced)| forced <= total);
    check(cycles, "memstats", &mut || {
        raw.cycles = None;
        raw.heap = None;
    });
    let cpu = raw.cpu.is_none_or(|cpu| {
        // Each GC class is within the GC total, which is within the total.
        cpu.iter().all(|&ns| ns >= 0)
            && cpu[..4].iter().all(|&ns| ns <= cpu[4])
            && cpu[4] <= cpu[10]
    });
    check(cpu, "work.cpuStats", &mut || raw.cpu = None);
    cleared
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn implausible_groups_are_cleared_alone() {
        let good = RawVitals {
            gomaxprocs: Some(2),
            cycles: Some((5, 1)),
            gc_percent: Some(100),
            cpu: Some([0, 0, 0, 0, 10, 0, 0, 0, 0, 0, 50]),
            ..RawVitals::default()
        };
        assert!(sanitize(&mut good.clone()).is_empty());
        for (bad, group) in [
            (
                RawVitals {
                    gomaxprocs: Some(0),
                    ..good.clone()
                },
                "gomaxprocs",
            ),
            (
                RawVitals {
                    cycles: Some((1, 5)),
                    ..good.clone()
                },
                "memstats",
            ),
            (
                RawVitals {
                    gc_percent: Some(-7),
                    ..good.clone()
                },
                "gcController",
            ),
            (
                RawVitals {
                    cpu: Some([0, 0, 0, 0, 10, 0, 0, 0, 0, 0, 5]),
                    ..good.clone()
                },
                "work.cpuStats",
            ),
        ] {
            let mut read = bad.clone();
            assert_eq!(sanitize(&mut read), vec![group], "{bad:?}");
            // The other groups stay.
            let others = [
                read.gomaxprocs.is_some(),
                read.cycles.is_some(),
                read.gc_percent.is_some(),
                read.cpu.is_some(),
            ];
            assert_eq!(others.iter().filter(|kept| **kept).count(), 3, "{read:?}");
        }
    }
}
