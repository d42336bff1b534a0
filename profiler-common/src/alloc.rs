//! Sampled allocations: the runtime's own heap-profile sampling (`runtime.profilealloc`, about
//! one allocation per `MemProfileRate` bytes), counted in the kernel by call stack and size.

/// Key of the kernel's sample counts.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AllocKey {
    /// User stack id in `ALLOC_STACKS`, or negative if the stack could not be taken.
    pub stack_id: i32,
    pub _pad: u32,
    /// The sampled allocation's size as the runtime passed it to `profilealloc`.
    pub size: u64,
}

const _: () = assert!(core::mem::size_of::<AllocKey>() == 16);

/// Entries in the counts map and the stack map: distinct (stack, size) pairs and stacks. The
/// counts are per CPU: 16384 keys x 8 bytes is 128 KiB per CPU.
pub const MAX_ALLOC_KEYS: u32 = 16_384;
/// A stack takes 1 KiB (127 frames), preallocated per target: 4096 are 4 MiB of kernel memory.
pub const MAX_ALLOC_STACKS: u32 = 4096;

/// Exact mode's per-CPU counters (`ALLOC_EXACT`): objects, bytes, then one count per power of
/// two of the requested size (index `EXACT_SIZE_BASE + floor(log2(size))`).
pub const EXACT_OBJECTS: u32 = 0;
pub const EXACT_BYTES: u32 = 1;
pub const EXACT_SIZE_BASE: u32 = 2;
pub const EXACT_SLOTS: u32 = EXACT_SIZE_BASE + 64;

#[cfg(feature = "user")]
mod user {
    // SAFETY: #[repr(C)], Copy, integers only, explicit padding: every byte pattern is valid.
    unsafe impl aya::Pod for super::AllocKey {}
}
