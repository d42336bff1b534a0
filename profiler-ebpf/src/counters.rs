//! Per-CPU self-diagnostic counters, summed by userspace (`profiler_common::counters`).
use aya_ebpf::{macros::map, maps::PerCpuArray};
use profiler_common::counters::{COUNT, HIT_KINDS};

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

#[map]
static PROBE_HITS: PerCpuArray<u64> = PerCpuArray::with_max_entries(HIT_KINDS, 0);

/// Count one hit of a probe family (`profiler_common::counters::HIT_*`).
#[inline(always)]
pub fn hit(kind: u32) {
    if let Some(counter) = PROBE_HITS.get_ptr_mut(kind) {
        // SAFETY: as in `bump`.
        unsafe { *counter += 1 };
    }
}
