//! Why each GC cycle started: uprobes on the entry and RET instructions of `runtime.gcStart`
//! and the entry of `runtime.gcBgMarkStartWorkers`, all outside any hot path.
//!
//! `gcStart(trigger gcTrigger)` is entered more often than cycles start: every goroutine that
//! sees the trigger pass calls it, and all but one re-test it under `work.startSema` and return.
//! The one that starts the cycle goes on to call `gcBgMarkStartWorkers`, still on its own
//! goroutine (only later steps run on the system stack), and nothing else calls it. So the
//! entry remembers each goroutine's trigger kind, and `gcBgMarkStartWorkers` counts the kind of
//! the goroutine that reached it: one count per cycle, of the kind that started it. The
//! goroutine (R14) is the key, not the thread: `gcStart` blocks on semaphores, and a goroutine
//! may resume on another thread. Each goroutine's entry goes at `gcStart`'s return, so the table
//! holds only the goroutines inside `gcStart` now, however many ask for cycles.
use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid,
    macros::{map, uprobe},
    maps::{HashMap, PerCpuArray},
    programs::ProbeContext,
};
use profiler_common::{counters, trigger::TRIGGER_KINDS};

use crate::{
    counters::{add, bump, hit},
    goabi::GoRegs,
};

/// `gcStart(trigger gcTrigger)` in Go 1.19–1.27: the struct is split over the integer
/// registers, so its first field, `kind` (an int), arrives in the first one, RAX.
const ARG_TRIGGER_KIND: usize = 0;

/// Goroutines inside `gcStart`, by (process, g): the trigger kind each came with. Far more
/// slots than goroutines that enter it at once in any service.
#[map]
static GC_START_KINDS: HashMap<[u64; 2], u32> = HashMap::with_max_entries(16384, 0);

/// Cycles started, by trigger kind (`profiler_common::trigger`).
#[map]
static GC_TRIGGERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(TRIGGER_KINDS, 0);

#[inline(always)]
fn goroutine(regs: &GoRegs) -> [u64; 2] {
    [bpf_get_current_pid_tgid() >> 32, regs.g()]
}

/// Entry of `runtime.gcStart`: remember which trigger this goroutine tests.
#[uprobe]
pub fn gc_start_entry(ctx: ProbeContext) -> u32 {
    hit(counters::HIT_GC_START);
    let regs = GoRegs::new(&ctx);
    let kind = regs.int(ARG_TRIGGER_KIND);
    if kind < u64::from(TRIGGER_KINDS) {
        // A full table leaves this goroutine's cycle, if it starts one, unmatched (counted).
        let _ = GC_START_KINDS.insert(goroutine(&regs), kind as u32, 0);
    }
    0
}

/// RET instructions of `runtime.gcStart`: this goroutine is done asking.
#[uprobe]
pub fn gc_start_return(ctx: ProbeContext) -> u32 {
    hit(counters::HIT_GC_START);
    let _ = GC_START_KINDS.remove(goroutine(&GoRegs::new(&ctx)));
    0
}

/// Entry of `runtime.gcBgMarkStartWorkers`: this goroutine is starting a cycle; count its kind.
#[uprobe]
pub fn gc_start_workers(ctx: ProbeContext) -> u32 {
    hit(counters::HIT_GC_START);
    let key = goroutine(&GoRegs::new(&ctx));
    // SAFETY: copies the value out at once.
    let Some(kind) = (unsafe { GC_START_KINDS.get(key) }).copied() else {
        // The cycle's gcStart was entered before mapscope attached, or the table was full.
        bump(counters::GC_TRIGGER_UNMATCHED);
        return 0;
    };
    let _ = GC_START_KINDS.remove(key);
    if let Some(counter) = GC_TRIGGERS.get_ptr_mut(kind) {
        add(counter, 1);
    }
    0
}
