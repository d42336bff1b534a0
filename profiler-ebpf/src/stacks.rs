//! User stacks taken into mapscope's own tables (`profiler_common::stacks`): walked by the
//! kernel through Go's frame pointers into a per-CPU buffer, hashed, and stored once per
//! distinct stack.
use aya_ebpf::{
    EbpfContext as _,
    bindings::{BPF_F_USER_STACK, BPF_NOEXIST},
    helpers::{bpf_get_current_pid_tgid, generated::bpf_get_stack},
    macros::map,
    maps::{HashMap, PerCpuArray},
    programs::ProbeContext,
};
use profiler_common::{
    STACK_DEPTH,
    stacks::{STACK_HASH_SEED, UserStack, stack_hash_finish, stack_hash_step, stack_id},
};

/// Where a stack is walked into before it is known whether its table has it (too big for the
/// program's 512-byte stack), and which program uses it now.
#[repr(C)]
pub struct StackBuffer {
    /// The pid_tgid of the thread whose program filled it last. Uprobe programs run with
    /// preemption on, so another thread's program may take this CPU's buffer in the middle of
    /// one: the owner then changed, and the stack is given up rather than mixed with another.
    owner: u64,
    stack: UserStack,
}

#[map]
static STACK_BUFFER: PerCpuArray<StackBuffer> = PerCpuArray::with_max_entries(1, 0);

/// Bytes of frames `bpf_get_stack` may write.
const FRAME_BYTES: u32 = (8 * STACK_DEPTH) as u32;

/// The id of the current user stack in `table`, storing it if new; -1 if it could not be
/// taken: no frames, the table full, another stack already on its id, or another program
/// took this CPU's buffer meanwhile.
#[inline(always)]
pub fn user_stack(ctx: &ProbeContext, table: &HashMap<u32, UserStack>) -> i32 {
    stack_into(ctx, table, None)
}

/// `user_stack` at a function's entry, whose return address `caller` is at the top of the
/// stack: the kernel's walk through frame pointers starts from the caller's frame, so it
/// skips the caller itself; it goes in as the second frame.
#[inline(always)]
pub fn user_stack_at_entry(
    ctx: &ProbeContext,
    table: &HashMap<u32, UserStack>,
    caller: u64,
) -> i32 {
    stack_into(ctx, table, Some(caller))
}

#[inline(always)]
fn stack_into(ctx: &ProbeContext, table: &HashMap<u32, UserStack>, caller: Option<u64>) -> i32 {
    let Some(buffer) = STACK_BUFFER.get_ptr_mut(0) else {
        return -1;
    };
    let owner = bpf_get_current_pid_tgid();
    // SAFETY: this CPU's slot of the buffer, valid while the program runs. Another program may
    // write it meanwhile (see `StackBuffer::owner`): it is read through the pointer each time,
    // and what was read is trusted only if the owner is still this thread afterwards.
    let owner_slot = unsafe { &raw mut (*buffer).owner };
    let still_ours = move || unsafe { core::ptr::read_volatile(owner_slot) } == owner;
    unsafe { core::ptr::write_volatile(owner_slot, owner) };
    // SAFETY: the helper writes at most FRAME_BYTES into `frames`, which holds exactly that;
    // with a caller, from the second frame on, at most 8 bytes fewer.
    let taken = unsafe {
        let frames = (&raw mut (*buffer).stack.frames).cast::<u64>();
        match caller {
            None => bpf_get_stack(
                ctx.as_ptr(),
                frames.cast(),
                FRAME_BYTES,
                u64::from(BPF_F_USER_STACK),
            ),
            Some(_) => bpf_get_stack(
                ctx.as_ptr(),
                frames.add(1).cast(),
                FRAME_BYTES - 8,
                u64::from(BPF_F_USER_STACK),
            ),
        }
    };
    if taken <= 0 {
        return -1;
    }
    let taken = match caller {
        // The walk's first frame (the entry itself) moves back, the caller after it.
        Some(caller) => {
            // SAFETY: in bounds of this CPU's buffer (see above).
            unsafe {
                (*buffer).stack.frames[0] = (*buffer).stack.frames[1];
                (*buffer).stack.frames[1] = caller;
            }
            taken + 8
        }
        None => taken,
    };
    // The helper zeroes the frames it did not fill, so the whole buffer is hashed: a loop
    // without a branch, which the verifier walks once (one that stopped at the depth taken
    // made the counted-allocation program too large to verify).
    let mut hash = STACK_HASH_SEED;
    for index in 0..STACK_DEPTH {
        // SAFETY: in bounds of this CPU's buffer (see above).
        hash = stack_hash_step(hash, unsafe { (*buffer).stack.frames[index] });
    }
    let hash = stack_hash_finish(hash);
    if !still_ours() {
        return -1;
    }
    let id = stack_id(hash);
    let key = id as u32;
    let known = |key: u32| match table.get_ptr(key) {
        // SAFETY: a value of the table, valid while the program runs.
        Some(known) if unsafe { (*known).hash } == hash => Some(id),
        Some(_) => Some(-1),
        None => None,
    };
    if let Some(id) = known(key) {
        return id;
    }
    // SAFETY: as above.
    unsafe {
        (*buffer).stack.hash = hash;
        (*buffer).stack.depth = (taken as usize / 8).min(STACK_DEPTH) as u64;
    }
    // SAFETY: as above; the kernel copies the value under the table's lock.
    #[allow(
        clippy::needless_borrows_for_generic_args,
        reason = "by value, the 528-byte stack would be copied onto the program's 512-byte stack"
    )]
    let inserted = table.insert(key, unsafe { &(*buffer).stack }, u64::from(BPF_NOEXIST));
    match inserted {
        Ok(()) if still_ours() => id,
        // The buffer changed hands before the copy was surely done: what was stored may be
        // another thread's frames; remove it (a later sample of this stack stores it again).
        Ok(()) => {
            let _ = table.remove(key);
            -1
        }
        // Another thread stored a stack on this id meanwhile: most likely this one.
        Err(_) => known(key).unwrap_or(-1),
    }
}
