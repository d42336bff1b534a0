//! Stop-the-world pauses: uprobes on `runtime.stopTheWorldWithSema` and
//! `runtime.startTheWorldWithSema` (entry and every RET instruction; never a uretprobe, which
//! corrupts Go stacks).
//!
//! The runtime measures its own pauses; these programs pick up the runtime's timestamps from
//! the functions' arguments and results, so the exported pause is the runtime's number and not
//! a second clock that would include the uprobes' own cost. The attach cookie says which Go
//! layout (`StwLayout`) the registers follow.
//!
//! A probe hit costs a microsecond or two, and one that fires while the world is stopped
//! lengthens the pause it measures. By default none does: Go 1.22+ is read at
//! `startTheWorldWithSema`'s RETs alone (after the runtime took its end-of-pause time), from
//! the copy of `w` the function keeps in its frame (`StwFrame`); Go 1.19/1.21 at the entry of
//! `stopTheWorldWithSema` (before the pause begins) and those RETs. Only the stopping part of
//! the pause (`--stw-stopping`) needs a hit inside: the RET of `stopTheWorldWithSema`, or the
//! entry of `startTheWorldWithSema` where the runtime hands over `finishedStopping`.
use aya_ebpf::{
    EbpfContext as _,
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{
        bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_user,
        generated::{self, bpf_get_attach_cookie},
    },
    macros::{map, uprobe},
    maps::{HashMap, RingBuf},
    programs::ProbeContext,
};
use aya_log_ebpf::warn;
use profiler_common::{
    counters,
    stw::{
        PendingStw, REASON_TEXT_LEN, STW_FLAG_REASON_IS_TEXT, STW_FLAG_STARTED_BY_KERNEL_CLOCK,
        STW_FLAG_STOPPED_BY_KERNEL_CLOCK, StwCookie, StwEvent, StwFrame, StwLayout,
    },
};

use crate::{
    counters::{bump, hit},
    goabi::GoRegs,
};

/// Threads currently between a stop and a start (Go 1.21/1.22, which need the stop side).
/// Only one thread at a time can hold the runtime's `worldsema`, and each entry is removed at
/// the start: the slots are for entries left by threads that died mid-pause (or a pause
/// mapscope attached in the middle of). Preallocated per target: 64, not thousands.
#[map]
static STOPPED: HashMap<u64, PendingStw> = HashMap::with_max_entries(PENDING_THREADS, 0);

/// Threads inside `startTheWorldWithSema`, between its entry and its return.
#[map]
static STARTING: HashMap<u64, PendingStw> = HashMap::with_max_entries(PENDING_THREADS, 0);

const PENDING_THREADS: u32 = 64;

/// One event per pause; at tens of pauses per second per target, 256 KiB is minutes of slack.
#[map]
static STW_EVENTS: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);

/// Wake userspace only once this much is waiting; otherwise it drains on its own timer
/// (collect/stw.rs). A wake-up per pause costs the daemon a context switch per pause, which on
/// a GC-heavy target competes with the target for CPU.
const WAKEUP_THRESHOLD_BYTES: u64 = 64 * 1024;

// Go ABI register slots used below (see goabi.rs), per function signature.
/// `stopTheWorldWithSema(reason stwReason)`, Go 1.21: `reason`.
const STOP_ARG_REASON: usize = 0;
/// `stopTheWorldWithSema(...) worldStop`, Go 1.22: result `worldStop{reason, start}`.
const STOP_RESULT_REASON: usize = 0;
const STOP_RESULT_START: usize = 1;
/// `startTheWorldWithSema(now int64, w worldStop) int64`, Go 1.22+: `w.reason`,
/// `w.start`/`w.startedStopping`, and (Go 1.23+) `w.finishedStopping`.
const START_ARG_REASON: usize = 1;
const START_ARG_STARTED: usize = 2;
const START_ARG_FINISHED: usize = 3;
/// `startTheWorldWithSema` result (every version): the `now` the runtime ended the pause at.
const START_RESULT_NOW: usize = 0;

/// `stwReason` is a uint8; the rest of its register is whatever was there before.
const REASON_MASK: u64 = 0xff;

#[inline(always)]
fn cookie(ctx: &ProbeContext) -> Option<StwCookie> {
    // SAFETY: the helper only reads the cookie attached to this program's perf event.
    StwCookie::decode(unsafe { bpf_get_attach_cookie(ctx.as_ptr()) })
}

#[inline(always)]
fn layout(ctx: &ProbeContext) -> Option<StwLayout> {
    cookie(ctx).map(|cookie| cookie.layout)
}

/// Go 1.19: the reason text the caller left in `getg().m.preemptoff` (a Go string: pointer,
/// length), and its length. A failed read gives length 0, the same as sweep termination's empty
/// text; reads fail only if the table's offsets are wrong for the binary, which the DWARF
/// cross-check and the per-release tests are there to catch.
#[inline(always)]
fn preemptoff(regs: &GoRegs, cookie: &StwCookie) -> ([u8; REASON_TEXT_LEN], u32) {
    let mut text = [0u8; REASON_TEXT_LEN];
    let Some(m) = regs.m(cookie.g_m_offset) else {
        return (text, 0);
    };
    let field = m + u64::from(cookie.m_preemptoff_offset);
    // SAFETY: bpf_probe_read_user copies from the target's memory and fails cleanly on a bad
    // address; nothing is dereferenced directly.
    let (Ok(pointer), Ok(length)) = (
        unsafe { bpf_probe_read_user(field as *const u64) },
        unsafe { bpf_probe_read_user((field + 8) as *const u64) },
    ) else {
        return (text, 0);
    };
    let length = if length > REASON_TEXT_LEN as u64 {
        REASON_TEXT_LEN as u32
    } else {
        length as u32
    };
    if length > 0 {
        // SAFETY: `length` is at most the buffer's size; the helper fails cleanly on a bad
        // source address, leaving zeros.
        unsafe {
            generated::bpf_probe_read_user(
                text.as_mut_ptr().cast(),
                length,
                pointer as *const core::ffi::c_void,
            )
        };
    }
    (text, length)
}

#[inline(always)]
fn remember(map: &HashMap<u64, PendingStw>, thread: u64, pending: &PendingStw) {
    if map.insert(thread, pending, 0).is_err() {
        bump(counters::STW_PENDING_FULL);
    }
}

/// Entry of `stopTheWorldWithSema`, Go 1.19 and 1.21: those runtimes keep the start time in a
/// global rather than passing it on, so the kernel clock marks when stopping began. Go 1.21
/// passes the reason as an argument; Go 1.19 leaves it in `m.preemptoff`.
#[uprobe]
pub fn stw_stop_entry(ctx: ProbeContext) -> u32 {
    hit(counters::HIT_STW);
    let Some(cookie) = cookie(&ctx) else {
        return 0;
    };
    let regs = GoRegs::new(&ctx);
    let (reason, flags, reason_text) = match cookie.layout {
        StwLayout::Go121 => (
            (regs.int(STOP_ARG_REASON) & REASON_MASK) as u32,
            STW_FLAG_STARTED_BY_KERNEL_CLOCK,
            [0; REASON_TEXT_LEN],
        ),
        StwLayout::Go119 => {
            let (text, length) = preemptoff(&regs, &cookie);
            (
                length,
                STW_FLAG_STARTED_BY_KERNEL_CLOCK | STW_FLAG_REASON_IS_TEXT,
                text,
            )
        }
        _ => return 0,
    };
    let pending = PendingStw {
        reason,
        flags,
        // SAFETY: reads the monotonic clock; no memory is touched.
        started_stopping_ns: unsafe { bpf_ktime_get_ns() },
        finished_stopping_ns: 0,
        reason_text,
    };
    remember(&STOPPED, bpf_get_current_pid_tgid(), &pending);
    0
}

/// RET sites of `stopTheWorldWithSema`, Go 1.19, 1.21 and 1.22: those runtimes do not hand the
/// end of stopping to `startTheWorldWithSema`, so the kernel clock marks it.
#[uprobe]
pub fn stw_stop_return(ctx: ProbeContext) -> u32 {
    hit(counters::HIT_STW);
    // SAFETY: reads the monotonic clock; no memory is touched.
    let now = unsafe { bpf_ktime_get_ns() };
    let thread = bpf_get_current_pid_tgid();
    match layout(&ctx) {
        Some(StwLayout::Go119 | StwLayout::Go121) => {
            if let Some(pending) = STOPPED.get_ptr_mut(thread) {
                // SAFETY: the pointer is this thread's own entry, fresh from the lookup.
                unsafe {
                    (*pending).finished_stopping_ns = now;
                    (*pending).flags |= STW_FLAG_STOPPED_BY_KERNEL_CLOCK;
                }
            }
        }
        Some(StwLayout::Go122) => {
            let regs = GoRegs::new(&ctx);
            let pending = PendingStw {
                reason: (regs.int(STOP_RESULT_REASON) & REASON_MASK) as u32,
                flags: STW_FLAG_STOPPED_BY_KERNEL_CLOCK,
                started_stopping_ns: regs.int(STOP_RESULT_START),
                finished_stopping_ns: now,
                reason_text: [0; REASON_TEXT_LEN],
            };
            remember(&STOPPED, thread, &pending);
        }
        _ => {}
    }
    0
}

/// Entry of `startTheWorldWithSema`, Go 1.22+, when the stopping part is measured or the
/// function's frame could not be read at its RETs: collect what the runtime knows about the
/// pause so far. It fires while the world is still stopped.
#[uprobe]
pub fn stw_start_entry(ctx: ProbeContext) -> u32 {
    hit(counters::HIT_STW);
    let thread = bpf_get_current_pid_tgid();
    let regs = GoRegs::new(&ctx);
    let pending = match layout(&ctx) {
        Some(StwLayout::Go122) => {
            let started = regs.int(START_ARG_STARTED);
            // SAFETY: as above.
            let stopped = unsafe { STOPPED.get(thread) }.copied();
            let (finished, flags) = match stopped {
                // Only trust the kernel-clock end of stopping if it belongs to this very stop.
                Some(s) if s.started_stopping_ns == started => (s.finished_stopping_ns, s.flags),
                _ => (0, 0),
            };
            PendingStw {
                reason: (regs.int(START_ARG_REASON) & REASON_MASK) as u32,
                flags,
                started_stopping_ns: started,
                finished_stopping_ns: finished,
                reason_text: [0; REASON_TEXT_LEN],
            }
        }
        Some(StwLayout::Go123) => PendingStw {
            reason: (regs.int(START_ARG_REASON) & REASON_MASK) as u32,
            flags: 0,
            started_stopping_ns: regs.int(START_ARG_STARTED),
            finished_stopping_ns: regs.int(START_ARG_FINISHED),
            reason_text: [0; REASON_TEXT_LEN],
        },
        _ => return 0,
    };
    let _ = STOPPED.remove(thread);
    remember(&STARTING, thread, &pending);
    0
}

/// Go 1.22+: `w`'s reason and start of stopping from the frame `startTheWorldWithSema` has just
/// popped (at its RET nothing has written below the stack pointer since). `None` if unreadable
/// or if the start is not before the end: then the frame is not what the disassembly said.
#[inline(always)]
fn from_frame(regs: &GoRegs, frame: &StwFrame, restarted: u64) -> Option<PendingStw> {
    let sp = regs.sp();
    // SAFETY: bpf_probe_read_user copies from the target's memory and fails cleanly on a bad
    // address; nothing is dereferenced directly.
    let reason =
        unsafe { bpf_probe_read_user((sp - u64::from(frame.reason_below_sp)) as *const u8) }
            .ok()?;
    // SAFETY: as above.
    let started =
        unsafe { bpf_probe_read_user((sp - u64::from(frame.started_below_sp)) as *const u64) }
            .ok()?;
    if started == 0 || started > restarted {
        return None;
    }
    Some(PendingStw {
        reason: u32::from(reason),
        flags: 0,
        started_stopping_ns: started,
        finished_stopping_ns: 0,
        reason_text: [0; REASON_TEXT_LEN],
    })
}

/// RET sites of `startTheWorldWithSema`: the result is the runtime's end of the pause.
#[uprobe]
pub fn stw_start_return(ctx: ProbeContext) -> u32 {
    hit(counters::HIT_STW);
    let thread = bpf_get_current_pid_tgid();
    let regs = GoRegs::new(&ctx);
    let restarted = regs.int(START_RESULT_NOW);
    // SAFETY: copies the value out at once; the entry is only written by this thread.
    let pending = match (unsafe { STARTING.get(thread) }).copied() {
        Some(pending) => {
            let _ = STARTING.remove(thread);
            Some(pending)
        }
        None => match cookie(&ctx) {
            // Go 1.19/1.21: what the stop probes kept.
            Some(StwCookie {
                layout: StwLayout::Go119 | StwLayout::Go121,
                ..
            }) => {
                // SAFETY: as above.
                let stopped = (unsafe { STOPPED.get(thread) }).copied();
                let _ = STOPPED.remove(thread);
                stopped
            }
            Some(StwCookie {
                frame: Some(frame), ..
            }) => from_frame(&regs, &frame, restarted),
            _ => None,
        },
    };
    let Some(pending) = pending else {
        bump(counters::STW_UNMATCHED_START);
        return 0;
    };
    let event = StwEvent {
        pid: (thread >> 32) as u32,
        reason: pending.reason,
        flags: pending.flags,
        _pad: 0,
        started_stopping_ns: pending.started_stopping_ns,
        finished_stopping_ns: pending.finished_stopping_ns,
        restarted_ns: restarted,
        reason_text: pending.reason_text,
    };
    let wakeup = if STW_EVENTS.query(u64::from(BPF_RB_AVAIL_DATA)) >= WAKEUP_THRESHOLD_BYTES {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    if STW_EVENTS
        .output::<StwEvent>(&event, u64::from(wakeup))
        .is_err()
    {
        bump(counters::STW_EVENT_LOST);
        warn!(
            &ctx,
            "stop-the-world event lost: ring buffer full (userspace too slow)"
        );
    }
    0
}
