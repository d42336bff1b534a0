//! What the exit summary says of the runtime.

use super::RawVitals;

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
            heap_goal: end.heap_goal.and_then(|inputs| inputs.goal()),
            gogc: end.gc_percent,
            memory_limit: end.memory_limit,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
