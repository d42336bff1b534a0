//! User stacks taken into mapscope's own tables (`profiler_common::stacks`): walked by the
//! kernel through Go's frame pointers into a per-CPU buffer, hashed, and stored once per
//! distinct stack.
use aya_ebpf::{
    EbpfContext as _,
    bindings::{BPF_F_USER_STACK, BPF_NOEXIST},
    helpers::generated::bpf_get_stack,
    macros::map,
    maps::{HashMap, PerCpuArray},
    programs::ProbeContext,
};
use profiler_common::{
    STACK_DEPTH,
    stacks::{STACK_HASH_SEED, UserStack, stack_hash_finish, stack_hash_step, stack_id},
};

/// Where a stack is walked into before it is known whether its table has it: too big for the
/// program's 512-byte stack.
#[map]
static STACK_BUFFER: PerCpuArray<UserStack> = PerCpuArray::with_max_entries(1, 0);

/// Bytes of frames `bpf_get_stack` may write.
const FRAME_BYTES: u32 = (8 * STACK_DEPTH) as u32;

/// The id of the current user stack in `table`, storing it if new; -1 if it could not be
/// taken: no frames, the table full, or another stack already on its id.
#[inline(always)]
pub fn user_stack(ctx: &ProbeContext, table: &HashMap<u32, UserStack>) -> i32 {
    let Some(buffer) = STACK_BUFFER.get_ptr_mut(0) else {
        return -1;
    };
    // SAFETY: this CPU's slot of the buffer, valid while the program runs; a program runs to
    // its end on one CPU, and the buffer is only used between here and the insert below.
    let buffer = unsafe { &mut *buffer };
    // SAFETY: the helper writes at most FRAME_BYTES into `frames`, which holds exactly that.
    let taken = unsafe {
        bpf_get_stack(
            ctx.as_ptr(),
            buffer.frames.as_mut_ptr().cast(),
            FRAME_BYTES,
            u64::from(BPF_F_USER_STACK),
        )
    };
    if taken <= 0 {
        return -1;
    }
    // The helper zeroes the frames it did not fill, so the whole buffer is hashed: a loop
    // without a branch, which the verifier walks once (one that stopped at the depth taken
    // made the counted-allocation program too large to verify).
    let mut hash = STACK_HASH_SEED;
    for &frame in &buffer.frames {
        hash = stack_hash_step(hash, frame);
    }
    let hash = stack_hash_finish(hash);
    let depth = (taken as usize / 8).min(STACK_DEPTH);
    let id = stack_id(hash);
    let key = id as u32;
    if let Some(known) = table.get_ptr(key) {
        // SAFETY: a value of the table, valid while the program runs.
        return if unsafe { (*known).hash } == hash {
            id
        } else {
            -1
        };
    }
    buffer.hash = hash;
    buffer.depth = depth as u64;
    match table.insert(key, buffer, u64::from(BPF_NOEXIST)) {
        Ok(()) => id,
        // Another thread stored a stack on this id meanwhile: most likely this one.
        Err(_) => match table.get_ptr(key) {
            // SAFETY: as above.
            Some(known) if unsafe { (*known).hash } == hash => id,
            _ => -1,
        },
    }
}
