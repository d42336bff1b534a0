//! User stacks, stored by mapscope's own tables rather than the kernel's stack maps.
//!
//! The kernel's `BPF_MAP_TYPE_STACK_TRACE` preallocates every slot at full depth whatever is
//! used (2 MiB for 4,096 stacks of 64 frames, per target), and gives up on a stack whose hash
//! bucket holds another one (with 4,096 buckets, common long before the table is full). Here a
//! stack is a plain hash table entry, created when first seen (on kernels that allocate hash
//! entries on demand, see `ON_DEMAND_TABLES`), keyed by 31 bits of a 64-bit hash of its frames,
//! with the whole hash kept in the entry: a different stack that lands on the same key is told
//! apart and counted as not taken, never given another stack's frames.

use crate::STACK_DEPTH;

/// One user stack: innermost frame first.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UserStack {
    /// `stack_hash` of the frames: two stacks on one key differ here.
    pub hash: u64,
    /// Frames used in `frames`; the rest is whatever the buffer held before.
    pub depth: u64,
    pub frames: [u64; STACK_DEPTH],
}

const _: () = assert!(core::mem::size_of::<UserStack>() == 16 + 8 * STACK_DEPTH);

impl Default for UserStack {
    fn default() -> Self {
        Self {
            hash: 0,
            depth: 0,
            frames: [0; STACK_DEPTH],
        }
    }
}

impl UserStack {
    /// The frames taken, innermost first.
    pub fn frames(&self) -> &[u64] {
        let depth = usize::try_from(self.depth).unwrap_or(usize::MAX);
        &self.frames[..depth.min(STACK_DEPTH)]
    }
}

/// The hash of a stack, folded one frame at a time: start from `STACK_HASH_SEED`, then
/// `stack_hash_step` each frame, innermost first, then `stack_hash_finish`. Split in three so
/// the kernel side can fold in a loop the verifier bounds.
pub const STACK_HASH_SEED: u64 = 0xcbf2_9ce4_8422_2325;

#[inline(always)]
pub const fn stack_hash_step(hash: u64, frame: u64) -> u64 {
    (hash ^ frame).wrapping_mul(0x0000_0100_0000_01b3)
}

/// Mixes the folded value (splitmix64's finalizer), so that the key's 31 bits depend on every
/// frame's bits.
#[inline(always)]
pub const fn stack_hash_finish(mut hash: u64) -> u64 {
    hash ^= hash >> 30;
    hash = hash.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    hash ^= hash >> 27;
    hash = hash.wrapping_mul(0x94d0_49bb_1331_11eb);
    hash ^ (hash >> 31)
}

/// The hash of a stack of `frames`, as the kernel side computes it: over all `STACK_DEPTH`
/// slots, those past the stack's depth zero (as `bpf_get_stack` leaves them).
pub fn stack_hash(frames: &[u64]) -> u64 {
    let padding = STACK_DEPTH.saturating_sub(frames.len());
    stack_hash_finish(
        frames
            .iter()
            .take(STACK_DEPTH)
            .chain(core::iter::repeat_n(&0, padding))
            .fold(STACK_HASH_SEED, |hash, &frame| stack_hash_step(hash, frame)),
    )
}

/// The key of a stack of hash `hash` in its table: never negative, so negative ids stay free
/// for "no stack" (-1) and for sites that are not stacks.
#[inline(always)]
pub const fn stack_id(hash: u64) -> i32 {
    (hash & 0x7fff_ffff) as i32
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: #[repr(C)], no padding (u64 fields only), every bit pattern valid.
    unsafe impl aya::Pod for super::UserStack {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stacks_that_differ_in_any_frame_or_in_depth_hash_apart() {
        let stack = [0x40_1000, 0x40_2000, 0x40_3000];
        let hash = stack_hash(&stack);
        assert_ne!(hash, stack_hash(&[0x40_1000, 0x40_2000, 0x40_3001]));
        assert_ne!(hash, stack_hash(&[0x40_2000, 0x40_1000, 0x40_3000]));
        assert_ne!(hash, stack_hash(&stack[..2]));
        assert_eq!(
            hash,
            stack_hash(&[stack.as_slice(), &[0; 10]].concat()),
            "the slots past the depth are zero in the kernel's buffer"
        );
        assert_eq!(hash, stack_hash(&stack), "the same frames, the same hash");
    }

    #[test]
    fn ids_are_never_negative_and_spread_over_31_bits() {
        // Stacks that differ only in their outermost frame's low bits, as sibling call sites
        // do: their ids must not pile up on a few keys.
        let mut ids = std::collections::HashSet::new();
        for caller in 0..4096_u64 {
            let id = stack_id(stack_hash(&[0x40_1000, 0x40_2000, 0x45_0000 + caller * 5]));
            assert!(id >= 0);
            ids.insert(id);
        }
        assert_eq!(ids.len(), 4096, "4,096 stacks, 4,096 ids");
    }

    #[test]
    fn frames_are_the_depth_taken() {
        let mut stack = UserStack {
            depth: 2,
            ..UserStack::default()
        };
        stack.frames[..3].copy_from_slice(&[1, 2, 3]);
        assert_eq!(stack.frames(), &[1, 2]);
        stack.depth = 1000;
        assert_eq!(
            stack.frames().len(),
            STACK_DEPTH,
            "a bad depth reads no further"
        );
    }
}
