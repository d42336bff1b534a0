//! Native allocations: one program on every entry point of a C allocator, told apart by the
//! call shape in its attach cookie. Every call the program makes is counted per CPU, with a
//! log2 size histogram; calls the allocator makes to its own entry points are not.
//!
//! The C ABI passes integer arguments in RDI, RSI, RDX, RCX, R8, R9 (amd64); `ProbeContext::arg`
//! reads them. Return probes are safe on C code, but the counts need none: what was asked for
//! is known at entry.
use aya_ebpf::{
    EbpfContext as _,
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_prandom_u32, bpf_ktime_get_ns, bpf_probe_read_user,
        generated::bpf_get_attach_cookie,
    },
    macros::{map, uprobe, uretprobe},
    maps::{Array, HashMap, PerCpuArray},
    programs::{ProbeContext, RetProbeContext},
};
use profiler_common::{
    alloc::exponential_distance,
    counters,
    native::{
        CallShape, LastCall, LiveSample, MAX_ALLOCATORS, MAX_ARGS, MAX_ENTRY_POINTS,
        MAX_NATIVE_LIVE, MAX_NATIVE_SAMPLE_KEYS, MAX_NATIVE_STACKS, MAX_NATIVE_THREADS,
        MAX_OWN_CODE, MAX_WRAPPER_LEVELS, MAX_WRAPPERS, NATIVE_BYTES, NATIVE_FREES, NATIVE_NESTED,
        NATIVE_OBJECTS, NATIVE_REALLOCS, NATIVE_SAMPLE_BYTES, NATIVE_SLOTS, NativeSampleKey,
        PendingSample, RETURNS_THROUGH_ARG0, ROLE_ALLOCATES, ROLE_FREES, ROLE_REALLOCATES,
        ZERO_SIZE_ALLOCATES, is_allocators_own, native_counter, native_size_slot,
    },
};

use crate::counters::{add_at, hit_governed};
use profiler_common::stacks::UserStack;

/// Bytes left, per CPU, until the next allocation whose stack is taken (0: not drawn yet).
/// Not atomic, as the Go counted mode's (`alloc::COUNTED_SAMPLE_LEFT`): a rare interleaving
/// loses one subtraction, making the next sample a little later.
#[map]
static NATIVE_SAMPLE_LEFT: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Sampled allocations by (stack, allocator, size); the probes fill the one
/// `NATIVE_SAMPLES_FILLING` names while userspace empties the other.
#[map]
static NATIVE_SAMPLES_0: HashMap<NativeSampleKey, u64> =
    HashMap::with_max_entries(MAX_NATIVE_SAMPLE_KEYS, 0);
#[map]
static NATIVE_SAMPLES_1: HashMap<NativeSampleKey, u64> =
    HashMap::with_max_entries(MAX_NATIVE_SAMPLE_KEYS, 0);
#[map]
static NATIVE_SAMPLES_FILLING: Array<u32> = Array::with_max_entries(1, 0);

#[map]
static NATIVE_STACKS: HashMap<u32, UserStack> = HashMap::with_max_entries(MAX_NATIVE_STACKS, 0);

/// Whether sampled allocations are tracked until freed (`--native-inuse`; set by userspace).
#[map]
static NATIVE_INUSE_ON: Array<u32> = Array::with_max_entries(1, 0);

/// By thread: the sampled allocation whose call has not returned yet.
#[map]
static NATIVE_PENDING: HashMap<u32, PendingSample> =
    HashMap::with_max_entries(MAX_NATIVE_THREADS, 0);

/// Sampled allocations still live, by block address.
#[map]
static NATIVE_LIVE: HashMap<u64, LiveSample> = HashMap::with_max_entries(MAX_NATIVE_LIVE, 0);

#[inline(always)]
fn tracking_live() -> bool {
    NATIVE_INUSE_ON.get(0) == Some(&1)
}

/// A call's return (`--native-inuse`, on the entry points that allocate): the block of the
/// thread's pending sample, if this is that call's return, goes live. (A return probe is safe
/// on C code, whose stacks do not move, as Go's do.)
#[uretprobe]
pub fn native_return(ctx: RetProbeContext) -> u32 {
    // Counted as the family's hits (each is a trap too); the family is never held while
    // tracking.
    if !hit_governed(counters::HIT_NATIVE) {
        return 0;
    }
    let tid = bpf_get_current_pid_tgid() as u32;
    // SAFETY: the value is copied before the entry is removed.
    let Some(pending) = (unsafe { NATIVE_PENDING.get(tid) }).copied() else {
        return 0;
    };
    // SAFETY: `regs` is the kernel's pt_regs for this probe hit, valid for the whole program.
    let regs = unsafe { &*ctx.regs };
    // A nested call's return (the allocator calling itself) leaves the stack deeper.
    if regs.rsp != pending.sp + 8 {
        return 0;
    }
    let _ = NATIVE_PENDING.remove(tid);
    let block = if pending.out == 0 {
        regs.rax
    } else if regs.rax == 0 {
        // posix_memalign succeeded: the block is where its first argument points.
        // SAFETY: bpf_probe_read_user copies from the target's memory and fails cleanly.
        unsafe { bpf_probe_read_user(pending.out as *const u64) }.unwrap_or(0)
    } else {
        0
    };
    if block == 0 {
        return 0;
    }
    let live = LiveSample {
        stack_id: pending.stack_id,
        allocator: pending.allocator,
        size: pending.size,
        // SAFETY: reads the monotonic clock; no memory is touched.
        at_ns: unsafe { bpf_ktime_get_ns() },
    };
    if NATIVE_LIVE.insert(block, live, 0).is_err() {
        crate::counters::bump(counters::ALLOC_TABLE_FULL);
    }
    0
}

/// Count `size` bytes against this CPU's distance to the next sample; when reached, take the
/// stack (the direct caller `ret` as its second frame) and count the sample; with
/// `--native-inuse`, wait for its block (`native_return`).
#[inline(always)]
fn sample(ctx: &ProbeContext, allocator: u8, size: u64, ret: u64, sp: u64, out: u64) {
    let Some(left) = NATIVE_SAMPLE_LEFT.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: a valid, aligned u64 of this CPU's slot, live while the program runs.
    let left = unsafe { &mut *left };
    if *left == 0 {
        *left = sample_distance();
    }
    if size < *left {
        *left -= size;
        return;
    }
    *left = sample_distance();
    let key = NativeSampleKey {
        stack_id: crate::stacks::user_stack_at_entry(ctx, &NATIVE_STACKS, site(ret, sp)),
        allocator: u32::from(allocator),
        size,
    };
    if tracking_live() {
        let pending = PendingSample {
            sp,
            stack_id: key.stack_id,
            allocator: key.allocator,
            size,
            out,
        };
        let _ = NATIVE_PENDING.insert(bpf_get_current_pid_tgid() as u32, pending, 0);
    }
    // Two calls, not one on a table chosen at run time: the verifier wants one map per call.
    if NATIVE_SAMPLES_FILLING.get(0) == Some(&1) {
        add_at(&NATIVE_SAMPLES_1, &key, 1, counters::ALLOC_TABLE_FULL);
    } else {
        add_at(&NATIVE_SAMPLES_0, &key, 1, counters::ALLOC_TABLE_FULL);
    }
}

/// Bytes until the next sample, drawn from an exponential distribution of mean
/// `NATIVE_SAMPLE_BYTES`.
#[inline(always)]
fn sample_distance() -> u64 {
    // SAFETY: a helper every program type may call; no arguments.
    exponential_distance(unsafe { bpf_get_prandom_u32() }, NATIVE_SAMPLE_BYTES)
}

/// `MAX_OWN_CODE` ranges `[start, end)`, set by userspace before attaching (empty: 0, 0).
#[map]
static NATIVE_OWN_CODE: Array<[u64; 2]> = Array::with_max_entries(MAX_OWN_CODE, 0);

/// Whether `ret` lies in a dedicated allocator library's code.
#[inline(always)]
fn in_own_code(ret: u64) -> bool {
    for index in 0..MAX_OWN_CODE {
        if let Some(&[start, end]) = NATIVE_OWN_CODE.get(index)
            && start <= ret
            && ret < end
        {
            return true;
        }
    }
    false
}

/// `MAX_WRAPPERS` functions that allocate for their caller (C++'s `operator new`), as
/// `[start, end, depth]` (see `profiler_common::native::MAX_WRAPPERS`), set by userspace.
#[map]
static NATIVE_WRAPPERS: Array<[u64; 3]> = Array::with_max_entries(MAX_WRAPPERS, 0);

/// The site of an allocation whose return address at the allocator's entry (stack pointer
/// `sp`) is `ret`: `ret`, or, when that is in a function allocating for its caller, the
/// return address that function's own frame holds, `depth` bytes above the one below it.
#[inline(always)]
fn site(ret: u64, sp: u64) -> u64 {
    let (mut site, mut slot) = (ret, sp);
    for _ in 0..MAX_WRAPPER_LEVELS {
        let mut depth = None;
        for index in 0..MAX_WRAPPERS {
            if let Some(&[start, end, bytes]) = NATIVE_WRAPPERS.get(index)
                && start <= site
                && site < end
            {
                depth = Some(bytes);
            }
        }
        let Some(depth) = depth else {
            break;
        };
        slot += 8 + depth;
        // SAFETY: bpf_probe_read_user copies from the target's memory and fails cleanly.
        match unsafe { bpf_probe_read_user(slot as *const u64) } {
            Ok(caller) => site = caller,
            Err(_) => break,
        }
    }
    site
}

/// By entry point index: the entry points whose calls may tail-jump into it, a bit each (set
/// by userspace before attaching).
#[map]
static NATIVE_TAIL_FROM: Array<u64> = Array::with_max_entries(MAX_ENTRY_POINTS, 0);

#[map]
static NATIVE_COUNTS: PerCpuArray<u64> =
    PerCpuArray::with_max_entries(NATIVE_SLOTS * MAX_ALLOCATORS, 0);

/// Each thread's last counted call (by thread id), to tell the allocator's own calls. A plain
/// hash table: as an LRU one it lost records (8 to 25 calls in 18,000 counted twice), though it
/// held three threads in 8,192 entries. Userspace removes the records of threads that ended
/// (`collect::native`), so a service that starts and ends threads does not fill it.
#[map]
static NATIVE_LAST_CALL: HashMap<u32, LastCall> = HashMap::with_max_entries(MAX_NATIVE_THREADS, 0);

/// Add `value` to allocator `allocator`'s counter `slot`.
#[inline(always)]
fn add(allocator: u8, slot: u32, value: u64) {
    if let Some(counter) = NATIVE_COUNTS.get_ptr_mut(native_counter(allocator, slot)) {
        crate::counters::add(counter, value);
    }
}

/// The C ABI's integer argument registers of this call (RDI, RSI, RDX, RCX, R8, R9), read at
/// fixed offsets: the verifier refuses a context read at an offset chosen at run time.
#[cfg(bpf_target_arch = "x86_64")]
#[inline(always)]
fn args(ctx: &ProbeContext) -> [u64; MAX_ARGS as usize] {
    // SAFETY: `regs` is the kernel's pt_regs for this probe hit, valid for the whole program.
    let regs = unsafe { &*ctx.regs };
    [regs.rdi, regs.rsi, regs.rdx, regs.rcx, regs.r8, regs.r9]
}

/// Argument `n` of `args`, 0 for `NO_ARG`.
#[inline(always)]
fn arg(args: &[u64; MAX_ARGS as usize], n: u8) -> u64 {
    match n {
        0 => args[0],
        1 => args[1],
        2 => args[2],
        3 => args[3],
        4 => args[4],
        5 => args[5],
        _ => 0,
    }
}

#[cfg(bpf_target_arch = "x86_64")]
#[inline(always)]
fn ip_and_sp(ctx: &ProbeContext) -> (u64, u64) {
    // SAFETY: `regs` is the kernel's pt_regs for this probe hit, valid for the whole program;
    // at a uprobe's handler its instruction pointer is the probed address.
    let regs = unsafe { &*ctx.regs };
    (regs.rip, regs.rsp)
}

#[uprobe]
pub fn native_call(ctx: ProbeContext) -> u32 {
    if !hit_governed(counters::HIT_NATIVE) {
        return 0;
    }
    // SAFETY: the helper only reads the cookie attached to this program's perf event.
    let shape = CallShape::decode(unsafe { bpf_get_attach_cookie(ctx.as_ptr()) });
    let (ip, sp) = ip_and_sp(&ctx);
    // At a function's entry the return address is at the top of the stack.
    // SAFETY: bpf_probe_read_user copies from the target's memory and fails cleanly.
    let ret = unsafe { bpf_probe_read_user(sp as *const u64) }.unwrap_or(0);
    let tid = bpf_get_current_pid_tgid() as u32;
    // SAFETY: reads the monotonic clock; no memory is touched.
    let now = unsafe { bpf_ktime_get_ns() };
    let own = in_own_code(ret)
        // SAFETY: the value is read before this program changes it.
        || unsafe { NATIVE_LAST_CALL.get(tid) }.is_some_and(|last| {
            let tail_from = NATIVE_TAIL_FROM
                .get(u32::from(shape.index))
                .copied()
                .unwrap_or(0);
            is_allocators_own(last, ip, sp, ret, tail_from)
        });
    if own {
        add(shape.allocator, NATIVE_NESTED, 1);
        return 0;
    }
    let args = args(&ctx);
    let size = match shape.count_arg {
        count if count < MAX_ARGS => times(arg(&args, shape.size_arg), arg(&args, count)),
        _ => arg(&args, shape.size_arg),
    };
    let pointer = arg(&args, shape.pointer_arg);
    let zero_size_allocates = shape.role & ZERO_SIZE_ALLOCATES != 0;
    let role = shape.role & !(ZERO_SIZE_ALLOCATES | RETURNS_THROUGH_ARG0);
    let out = if shape.role & RETURNS_THROUGH_ARG0 != 0 {
        args[0]
    } else {
        0
    };
    // A block freed or moved is no longer live.
    if pointer != 0 && role != ROLE_ALLOCATES && tracking_live() {
        let _ = NATIVE_LIVE.remove(pointer);
    }
    // The size of the block this call allocates, if it allocates one.
    let allocates = match role {
        ROLE_ALLOCATES => Some(size),
        ROLE_REALLOCATES => match (pointer, size) {
            // realloc(NULL, n) allocates.
            (0, _) => Some(size),
            // realloc(p, 0) frees, as glibc, jemalloc and tcmalloc do.
            (_, 0) if !zero_size_allocates => {
                add(shape.allocator, NATIVE_FREES, 1);
                None
            }
            _ => {
                add(shape.allocator, NATIVE_REALLOCS, 1);
                add(shape.allocator, NATIVE_FREES, 1);
                Some(size)
            }
        },
        ROLE_FREES => {
            if pointer == 0 {
                return 0;
            }
            add(shape.allocator, NATIVE_FREES, 1);
            None
        }
        _ => return 0,
    };
    // One place that samples: the stack walk's loop, inlined at several, made the program too
    // large for the verifier.
    if let Some(size) = allocates {
        allocation(shape.allocator, size);
        sample(&ctx, shape.allocator, size, ret, sp, out);
    }
    let call = LastCall {
        sp,
        ret,
        start: ip,
        end: ip + u64::from(shape.function_bytes),
        at_ns: now,
        index: u64::from(shape.index),
    };
    // In place when the thread has a record: an insert into a hash table that allocates its
    // entries as needed (BPF_F_NO_PREALLOC) allocates a new one and frees the old after an
    // RCU grace period, on every call.
    match NATIVE_LAST_CALL.get_ptr_mut(tid) {
        // SAFETY: a value of the table, valid while the program runs; only this thread's
        // programs write it.
        Some(last) => unsafe { *last = call },
        None => {
            let _ = NATIVE_LAST_CALL.insert(tid, call, 0);
        }
    }
    0
}

/// `a × b`, each factor taken at most 2^32 − 1 so that the product fits: an overflow check
/// compiles to a 128-bit multiply, which BPF has not. (A `calloc` with a factor that large
/// asks for more than any allocator gives, and fails.)
#[inline(always)]
fn times(a: u64, b: u64) -> u64 {
    let most = u64::from(u32::MAX);
    a.min(most) * b.min(most)
}

#[inline(always)]
fn allocation(allocator: u8, size: u64) {
    add(allocator, NATIVE_OBJECTS, 1);
    add(allocator, NATIVE_BYTES, size);
    add(allocator, native_size_slot(size), 1);
}
