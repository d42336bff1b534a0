//! Sampled allocations: a uprobe on `runtime.profilealloc`, which the runtime calls for the
//! allocations its heap profiler samples (on average one per `runtime.MemProfileRate` bytes,
//! 512 KiB by default). So the probe fires rarely whatever the allocation rate, and nothing is
//! sent per sample: the kernel counts samples by (user stack, size), and userspace scales them
//! the way pprof does.
use aya_ebpf::{
    bindings::BPF_F_USER_STACK,
    macros::{map, uprobe},
    maps::{PerCpuArray, PerCpuHashMap, StackTrace},
    programs::{ProbeContext, tracing::StackIdContext as _},
};
use profiler_common::{
    alloc::{
        AllocKey, EXACT_BYTES, EXACT_OBJECTS, EXACT_SIZE_BASE, EXACT_SLOTS, MAX_ALLOC_KEYS,
        MAX_ALLOC_STACKS,
    },
    counters,
};

use crate::{
    counters::{add_at, hit, hit_governed},
    goabi::GoRegs,
};

/// User stacks of sampled allocations, walked by the kernel through Go's frame pointers.
#[map]
static ALLOC_STACKS: StackTrace = StackTrace::with_max_entries(MAX_ALLOC_STACKS, 0);

/// Samples counted by (stack, size), per CPU (userspace adds the CPUs up).
#[map]
static ALLOC_SAMPLES: PerCpuHashMap<AllocKey, u64> =
    PerCpuHashMap::with_max_entries(MAX_ALLOC_KEYS, 0);

/// `profilealloc(mp *m, x unsafe.Pointer, size uintptr)`, Go 1.19 through 1.27
/// (src/runtime/malloc.go): `size` is the third integer argument.
const PROFILEALLOC_ARG_SIZE: usize = 2;

#[uprobe]
pub fn alloc_sample(ctx: ProbeContext) -> u32 {
    if !hit_governed(counters::HIT_ALLOC) {
        return 0;
    }
    let size = GoRegs::new(&ctx).int(PROFILEALLOC_ARG_SIZE);
    let stack_id = ctx
        .get_stackid(&ALLOC_STACKS, u64::from(BPF_F_USER_STACK))
        .map_or(-1, |id| id as i32);
    let key = AllocKey {
        stack_id,
        _pad: 0,
        size,
    };
    add_at(&ALLOC_SAMPLES, &key, 1, counters::ALLOC_TABLE_FULL);
    0
}

/// Exact mode (opt-in, costly): every allocation, counted per CPU with a log2 size histogram.
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
    // mallocgc(0) hands out the shared zero-sized object; the runtime does not count it.
    if size == 0 {
        return 0;
    }
    add(EXACT_OBJECTS, 1);
    add(EXACT_BYTES, size);
    add(EXACT_SIZE_BASE + (63 - size.leading_zeros()), 1);
    0
}
