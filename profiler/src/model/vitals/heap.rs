//! The heap figures: exact allocation and free totals from `memstats.heapStats`, and the heap
//! goal as the pacer computes it.

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
    ///
    /// `None` when the fields were read in the middle of an update: the runtime retries its own
    /// reads until free plus allocated heap fits in the mapped memory; a single outside read
    /// cannot retry, so it is skipped (the exported goal keeps its last value).
    pub fn goal(&self) -> Option<u64> {
        let heap_alloc = self.total_alloc.wrapping_sub(self.total_free);
        if self.heap_free.checked_add(heap_alloc)? > self.mapped_ready {
            return None;
        }
        let mut goal = self.gc_percent_heap_goal;
        let limited = self.memory_limit_goal();
        if limited < goal {
            return Some(limited);
        }
        goal = goal.max(self.sweep_dist_min_trigger);
        const MIN_RUNWAY: u64 = 64 << 10;
        if self.triggered != u64::MAX && goal < self.triggered.wrapping_add(MIN_RUNWAY) {
            goal = self.triggered.wrapping_add(MIN_RUNWAY);
        }
        Some(goal)
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
        let mut goal = self.memory_limit - non_heap.wrapping_add(overage);
        let headroom = (goal / 100 * self.headroom_percent).max(MIN_HEADROOM);
        if goal < headroom || goal - headroom < headroom {
            goal = headroom;
        } else {
            goal -= headroom;
        }
        goal.max(self.heap_marked)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(gogc.goal(), Some(8 * MIB - 1 + (64 << 10)));
        // GOGC off, a 100 MiB limit: non-heap is 10 - 1 - 6 = 3 MiB; 97 MiB less 3% headroom.
        let limited = HeapGoalInputs {
            gc_percent_heap_goal: u64::MAX,
            memory_limit: 100 * MIB,
            ..gogc
        };
        let goal = 97 * MIB;
        assert_eq!(limited.goal(), Some(goal - goal / 100 * 3));
        // Go 1.19: a fixed 1 MiB.
        let go119 = HeapGoalInputs {
            headroom_percent: 0,
            ..limited
        };
        assert_eq!(go119.goal(), Some(goal - MIB));
        let over = HeapGoalInputs {
            memory_limit: 2 * MIB,
            ..limited
        };
        assert_eq!(over.goal(), Some(4 * MIB), "the live heap");
        // Read mid-update: more free and allocated heap than is mapped. The runtime would
        // read again; mapscope skips the reading.
        let torn = HeapGoalInputs {
            total_alloc: 30 * MIB,
            ..limited
        };
        assert_eq!(torn.goal(), None);
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
}
