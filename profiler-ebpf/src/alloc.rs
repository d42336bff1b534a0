//! Sampled allocations: a uprobe on `runtime.profilealloc`, which the runtime calls for the
//! allocations its heap profiler samples (on average one per `runtime.MemProfileRate` bytes,
//! 512 KiB by default). So the probe fires rarely whatever the allocation rate, and nothing is
//! sent per sample: the kernel counts samples by (user stack, size), and userspace scales them
//! the way pprof does.
use aya_ebpf::{
    helpers::bpf_get_prandom_u32,
    macros::{map, uprobe},
    maps::{Array, HashMap, PerCpuArray},
    programs::ProbeContext,
};
use profiler_common::{
    alloc::{
        AllocKey, COUNTED_SAMPLE_BYTES, EXACT_BYTES, EXACT_OBJECTS, EXACT_SLOTS, MAX_ALLOC_KEYS,
        MAX_ALLOC_STACKS, exponential_distance, size_slot,
    },
    counters,
    stacks::UserStack,
};

use crate::{
    counters::{add_at, hit, hit_governed},
    goabi::GoRegs,
    stacks::user_stack,
};

/// User stacks of sampled allocations, walked by the kernel through Go's frame pointers, the
/// innermost `STACK_DEPTH` frames of each.
#[map]
static ALLOC_STACKS: HashMap<u32, UserStack> = HashMap::with_max_entries(MAX_ALLOC_STACKS, 0);

/// Samples counted by (stack, size), in one of two tables: the probes add to the one
/// `ALLOC_SAMPLES_FILLING` names while userspace empties the other, so what userspace reads is
/// what was sampled since, never the whole history (a long-running service's distinct stacks
/// would otherwise fill a table for good, and cost a read each every second).
#[map]
static ALLOC_SAMPLES_0: HashMap<AllocKey, u64> = HashMap::with_max_entries(MAX_ALLOC_KEYS, 0);
#[map]
static ALLOC_SAMPLES_1: HashMap<AllocKey, u64> = HashMap::with_max_entries(MAX_ALLOC_KEYS, 0);

/// Which sample table the probes fill (0 or 1), set by userspace.
#[map]
static ALLOC_SAMPLES_FILLING: Array<u32> = Array::with_max_entries(1, 0);

/// `profilealloc(mp *m, x unsafe.Pointer, size uintptr)`, Go 1.19 through 1.27
/// (src/runtime/malloc.go): `size` is the third integer argument.
const PROFILEALLOC_ARG_SIZE: usize = 2;

#[uprobe]
pub fn alloc_sample(ctx: ProbeContext) -> u32 {
    if !hit_governed(counters::HIT_ALLOC) {
        return 0;
    }
    let size = GoRegs::new(&ctx).int(PROFILEALLOC_ARG_SIZE);
    count_sample(&ctx, size);
    0
}

/// Count one sampled allocation of `size` bytes under the stack it was made from.
#[inline(always)]
fn count_sample(ctx: &ProbeContext, size: u64) {
    let stack_id = user_stack(ctx, &ALLOC_STACKS);
    let key = AllocKey {
        stack_id,
        _pad: 0,
        size,
    };
    // Two calls, not one on a table chosen at run time: the verifier wants one map per call.
    if ALLOC_SAMPLES_FILLING.get(0) == Some(&1) {
        add_at(&ALLOC_SAMPLES_1, &key, 1, counters::ALLOC_TABLE_FULL);
    } else {
        add_at(&ALLOC_SAMPLES_0, &key, 1, counters::ALLOC_TABLE_FULL);
    }
}

/// Every allocation the probes saw, counted per CPU with a log2 size histogram: exact mode
/// (opt-in, costly) and counted mode (programs whose own sampling is off, governed).
#[map]
static ALLOC_EXACT: PerCpuArray<u64> = PerCpuArray::with_max_entries(EXACT_SLOTS, 0);

/// `mallocgc(size uintptr, typ *_type, needzero bool)` and Go 1.26+'s size-specialized
/// `mallocgc*SC*` variants, which compiled code calls directly (src/runtime/malloc.go,
/// malloc_generated.go): `size` is the first integer argument.
const MALLOCGC_ARG_SIZE: usize = 0;

#[inline(always)]
fn add(slot: u32, value: u64) {
    if let Some(counter) = ALLOC_EXACT.get_ptr_mut(slot) {
        crate::counters::add(counter, value);
    }
}

#[uprobe]
pub fn alloc_exact(ctx: ProbeContext) -> u32 {
    hit(counters::HIT_ALLOC_EXACT);
    let size = GoRegs::new(&ctx).int(MALLOCGC_ARG_SIZE);
    count_allocation(size);
    0
}

/// Count an allocation of `size` bytes; whether it was one (`mallocgc(0)` hands out the shared
/// zero-sized object, which the runtime does not count).
#[inline(always)]
fn count_allocation(size: u64) -> bool {
    if size == 0 {
        return false;
    }
    add(EXACT_OBJECTS, 1);
    add(EXACT_BYTES, size);
    add(size_slot(size), 1);
    true
}

/// Counted mode's bytes left, per CPU, until the next allocation whose stack is taken (0: not
/// drawn yet). Not atomic: two threads' programs interleaving on one CPU between the read and
/// the write lose one subtraction, which makes the next sample come a little later; that is
/// rare enough (a preemption inside a few instructions) not to bias the estimates.
#[map]
static COUNTED_SAMPLE_LEFT: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Counted mode, for programs whose runtime samples nothing (`MemProfileRate` 0): the same
/// probes as exact mode, taken on and off by the overhead governor. Every call it sees is
/// counted; a stack is taken only for a byte-weighted sample of them, the way the runtime's
/// own sampler picks (`runtime.nextSample`): an allocation is sampled when it reaches the
/// bytes left, then the next distance is drawn from an exponential distribution of mean
/// `COUNTED_SAMPLE_BYTES`. So samples scale back up exactly as pprof scales Go's.
#[uprobe]
pub fn alloc_count(ctx: ProbeContext) -> u32 {
    if !hit_governed(counters::HIT_ALLOC_COUNT) {
        return 0;
    }
    let size = GoRegs::new(&ctx).int(MALLOCGC_ARG_SIZE);
    if !count_allocation(size) {
        return 0;
    }
    let Some(left) = COUNTED_SAMPLE_LEFT.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: a valid, aligned u64 of this CPU's slot, live while the program runs.
    let left = unsafe { &mut *left };
    if *left == 0 {
        *left = sample_distance();
    }
    if size < *left {
        *left -= size;
        return 0;
    }
    *left = sample_distance();
    count_sample(&ctx, size);
    0
}

/// Bytes until the next sample, drawn from an exponential distribution of mean
/// `COUNTED_SAMPLE_BYTES`.
#[inline(always)]
fn sample_distance() -> u64 {
    // SAFETY: a helper every program type may call; no arguments.
    exponential_distance(unsafe { bpf_get_prandom_u32() }, COUNTED_SAMPLE_BYTES)
}
