//! Per-CPU self-diagnostic counters, summed by userspace (`profiler_common::counters`), and
//! the one way every program adds to a counter.
//!
//! Uprobe programs run in the probed thread's context with preemption on (the kernel only
//! keeps them from migrating): two threads' programs can interleave on one CPU, so a plain
//! `*counter += 1` on "this CPU's own slot" loses increments on a busy machine. Every add is
//! atomic, and a new key is inserted only if absent.
use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::bpf_ktime_get_ns,
    macros::map,
    maps::{Array, HashMap, PerCpuArray, PerCpuHashMap},
};
use profiler_common::counters::{COUNT, HIT_KINDS};

#[map]
static PROBE_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNT, 0);

/// The errno of an insert refused because the key exists (`BPF_NOEXIST`).
pub const EEXIST: i32 = 17;

/// Add `value` to the counter at `counter`, atomically (see the module's comment).
#[inline(always)]
pub fn add(counter: *mut u64, value: u64) {
    // The BPF target has no compare-and-swap, so core's atomic types offer no fetch_add; the
    // intrinsic compiles to the ISA's atomic add (with an unused result: kernels from 3.18).
    // SAFETY: `counter` comes from a map lookup: a valid, aligned u64 of the map's value, live
    // while the program runs.
    unsafe {
        core::intrinsics::atomic_xadd::<u64, u64, { core::intrinsics::AtomicOrdering::Relaxed }>(
            counter, value,
        );
    }
}

/// A hash table of u64 counters, per CPU or shared: `add_at` adds atomically either way.
pub trait CounterTable<K> {
    fn counter(&self, key: &K) -> Option<*mut u64>;
    fn create(&self, key: &K, value: u64) -> Result<(), i32>;
}

/// The same two calls on aya's per-CPU and shared hash maps, which have no trait in common.
macro_rules! counter_table {
    ($($table:ident),+) => {$(
        impl<K> CounterTable<K> for $table<K, u64> {
            #[inline(always)]
            fn counter(&self, key: &K) -> Option<*mut u64> {
                self.get_ptr_mut(key)
            }

            #[inline(always)]
            fn create(&self, key: &K, value: u64) -> Result<(), i32> {
                self.insert(key, value, u64::from(BPF_NOEXIST))
            }
        }
    )+};
}

counter_table!(PerCpuHashMap, HashMap);

/// Add `value` to `key`'s counter in `map`, creating it if absent; `full` is the drop reason
/// counted when the table has no room.
#[inline(always)]
pub fn add_at<K>(map: &impl CounterTable<K>, key: &K, value: u64, full: u32) {
    if let Some(counter) = map.counter(key) {
        add(counter, value);
        return;
    }
    match map.create(key, value) {
        Ok(()) => {}
        // Another thread created it meanwhile: add to it.
        Err(error) if error == -EEXIST => {
            if let Some(counter) = map.counter(key) {
                add(counter, value);
            }
        }
        Err(_) => bump(full),
    }
}

#[inline(always)]
pub fn bump(index: u32) {
    if let Some(counter) = PROBE_COUNTERS.get_ptr_mut(index) {
        add(counter, 1);
    }
}

#[map]
static PROBE_HITS: PerCpuArray<u64> = PerCpuArray::with_max_entries(HIT_KINDS, 0);

/// Count one hit of a probe family (`profiler_common::counters::HIT_*`).
#[inline(always)]
pub fn hit(kind: u32) {
    if let Some(counter) = PROBE_HITS.get_ptr_mut(kind) {
        add(counter, 1);
    }
}

/// Until when each family the overhead governor cuts counts, in the kernel's monotonic clock
/// (ns): 0 for always (the default, and a family attached all the time), the end of its on
/// part while it cycles, 1 (long past) while its probes come off and go back (they still fire
/// then, one after another, but count nothing). An on part ends in the kernel at its planned
/// time even when userspace comes late to take the probes off, as it can by hundreds of
/// milliseconds on a busy node: counts past the end would be scaled up as if they belonged to
/// the planned part, and the estimates would run high.
#[map]
static FAMILY_COUNTS_UNTIL: Array<u64> = Array::with_max_entries(HIT_KINDS, 0);

/// Count one hit of a family the governor may take off; whether it counts now.
#[inline(always)]
pub fn hit_governed(kind: u32) -> bool {
    hit(kind);
    match FAMILY_COUNTS_UNTIL.get(kind) {
        None | Some(&0) => true,
        Some(&until) => {
            // SAFETY: reads the monotonic clock; no memory is touched.
            let now = unsafe { bpf_ktime_get_ns() };
            now < until
        }
    }
}
