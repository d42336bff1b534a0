//! Why each GC cycle started: uprobes on the entries of `runtime.gcStart` and
//! `runtime.gcBgMarkStartWorkers`, both outside any hot path.
//!
//! `gcStart(trigger gcTrigger)` is entered more often than cycles start: every goroutine that
//! sees the trigger pass calls it, and all but one re-test it under `work.startSema` and return.
//! The one that starts the cycle goes on to call `gcBgMarkStartWorkers`, still on its own
//! goroutine (only later steps run on the system stack), and nothing else calls it. So the
//! entry remembers each goroutine's trigger kind, and `gcBgMarkStartWorkers` counts the kind of
//! the goroutine that reached it: one count per cycle, of the kind that started it. The
//! goroutine (R14) is the key, not the thread: `gcStart` blocks on semaphores, and a goroutine
//! may resume on another thread.
//!
//! `gcStart` is also entered inside itself: an allocation on its way (the first `semacquire`
//! allocates a `sudog`) finds the trigger reached and calls it again, and that call returns at
//! once because `gcStart` bails out when called with locks held, on the system stack or with
//! preemption off. The entry probe makes the same check and records nothing for such a call,
//! so the outer call's kind stays.
use aya_ebpf::{
    EbpfContext as _,
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_user, generated::bpf_get_attach_cookie},
    macros::{map, uprobe},
    maps::{LruHashMap, PerCpuArray},
    programs::ProbeContext,
};
use profiler_common::{
    counters,
    trigger::{GcStartCookie, TRIGGER_KINDS},
};

use crate::{
    counters::{add, bump, hit},
    goabi::GoRegs,
};

/// `gcStart(trigger gcTrigger)` in Go 1.19–1.27: the struct is split over the integer
/// registers, so its first field, `kind` (an int), arrives in the first one, RAX.
const ARG_TRIGGER_KIND: usize = 0;

/// Goroutines that entered `gcStart`, by (process, g): the trigger kind each came with. A
/// goroutine that loses the race to start the cycle leaves its entry, overwritten at its next
/// call; LRU, so the table never fills and the oldest entries go first. 2048 is more than the
/// goroutines that ask for one cycle in any but extreme services (an evicted winner counts as
/// `GC_TRIGGER_UNMATCHED`), and costs the kernel about 180 KiB per target where 16384 cost
/// 1.4 MiB.
#[map]
static GC_START_KINDS: LruHashMap<[u64; 2], u32> = LruHashMap::with_max_entries(2048, 0);

/// Cycles started, by trigger kind (`profiler_common::trigger`).
#[map]
static GC_TRIGGERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(TRIGGER_KINDS, 0);

#[inline(always)]
fn goroutine(regs: &GoRegs) -> [u64; 2] {
    [bpf_get_current_pid_tgid() >> 32, regs.g()]
}

/// Whether this `gcStart` call returns at once (its own check: `gp == mp.g0 || mp.locks > 1 ||
/// mp.preemptoff != ""`, after its `acquirem` added one to `locks`); unreadable counts as yes.
#[inline(always)]
fn bails_out(regs: &GoRegs, cookie: &GcStartCookie) -> bool {
    let Some(m) = regs.m(cookie.g_m) else {
        return true;
    };
    // SAFETY: bpf_probe_read_user copies from the target's memory and fails cleanly on a bad
    // address; nothing is dereferenced directly.
    let read = |address: u64| unsafe { bpf_probe_read_user(address as *const u64) };
    let (Ok(g0), Ok(locks), Ok(preemptoff_len)) = (
        read(m + u64::from(cookie.m_g0)),
        // SAFETY: as above.
        unsafe { bpf_probe_read_user((m + u64::from(cookie.m_locks)) as *const i32) },
        // A Go string: pointer, then length.
        read(m + u64::from(cookie.m_preemptoff) + 8),
    ) else {
        return true;
    };
    regs.g() == g0 || locks >= 1 || preemptoff_len != 0
}

/// Entry of `runtime.gcStart`: remember which trigger this goroutine tests.
#[uprobe]
pub fn gc_start_entry(ctx: ProbeContext) -> u32 {
    hit(counters::HIT_GC_START);
    // SAFETY: the helper only reads the cookie attached to this program's perf event.
    let cookie = GcStartCookie::decode(unsafe { bpf_get_attach_cookie(ctx.as_ptr()) });
    let regs = GoRegs::new(&ctx);
    let kind = regs.int(ARG_TRIGGER_KIND);
    if kind < u64::from(TRIGGER_KINDS) && !bails_out(&regs, &cookie) {
        let _ = GC_START_KINDS.insert(goroutine(&regs), kind as u32, 0);
    }
    0
}

/// Entry of `runtime.gcBgMarkStartWorkers`: this goroutine is starting a cycle; count its kind.
#[uprobe]
pub fn gc_start_workers(ctx: ProbeContext) -> u32 {
    hit(counters::HIT_GC_START);
    let key = goroutine(&GoRegs::new(&ctx));
    // SAFETY: copies the value out at once.
    let Some(kind) = (unsafe { GC_START_KINDS.get(key) }).copied() else {
        // The cycle's gcStart was entered before mapscope attached.
        bump(counters::GC_TRIGGER_UNMATCHED);
        return 0;
    };
    let _ = GC_START_KINDS.remove(key);
    if let Some(counter) = GC_TRIGGERS.get_ptr_mut(kind) {
        add(counter, 1);
    }
    0
}
