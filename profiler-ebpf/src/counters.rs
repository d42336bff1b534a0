//! Per-CPU self-diagnostic counters, summed by userspace (`profiler_common::counters`).
use aya_ebpf::{macros::map, maps::PerCpuArray};
use profiler_common::counters::COUNT;

#[map]
static PROBE_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNT, 0);

#[inline(always)]
pub fn bump(index: u32) {
    if let Some(counter) = PROBE_COUNTERS.get_ptr_mut(index) {
        // SAFETY: the pointer comes from the map lookup and is this CPU's own slot; uprobe
        // programs do not preempt each other on one CPU, so a plain add cannot race.
        unsafe { *counter += 1 };
    }
}
