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

/// Entries in each of the two sample tables (`ALLOC_SAMPLES_0`, `ALLOC_SAMPLES_1`): distinct
/// (stack, size) pairs sampled while one table fills, about a second, not over the target's
/// life (userspace empties the other). About 100 bytes each, shared by the CPUs.
pub const MAX_ALLOC_KEYS: u32 = 4096;
/// The sample tables, by the value of `ALLOC_SAMPLES_FILLING`: the probes add to one while
/// userspace empties the other.
pub const ALLOC_SAMPLE_TABLES: [&str; 2] = ["ALLOC_SAMPLES_0", "ALLOC_SAMPLES_1"];
/// Stacks of sampled allocations, each `STACK_DEPTH` frames (512 bytes), preallocated per
/// target: 4096 are 2 MiB of kernel memory.
pub const MAX_ALLOC_STACKS: u32 = 4096;

/// Exact and counted mode's per-CPU counters (`ALLOC_EXACT`): objects, bytes, then one count
/// per power of two of the requested size (`size_slot`).
pub const EXACT_OBJECTS: u32 = 0;
pub const EXACT_BYTES: u32 = 1;
pub const EXACT_SIZE_BASE: u32 = 2;
pub const EXACT_SLOTS: u32 = EXACT_SIZE_BASE + 65;

/// The size counter of an allocation of `size` bytes (at least 1): `EXACT_SIZE_BASE + k` for
/// `2^(k-1) < size <= 2^k`, so that each slot is one `le` bucket of a power-of-two histogram.
#[inline(always)]
pub const fn size_slot(size: u64) -> u32 {
    EXACT_SIZE_BASE + (64 - (size - 1).leading_zeros())
}

/// The largest size slot `k` counts: `2^k` bytes.
pub const fn slot_bound(slot: u32) -> u64 {
    match 1u64.checked_shl(slot - EXACT_SIZE_BASE) {
        Some(bound) => bound,
        None => u64::MAX,
    }
}

/// Counted mode's mean distance between sampled allocations, in bytes: the runtime default of
/// `MemProfileRate`, so its samples read like the runtime's own.
pub const COUNTED_SAMPLE_BYTES: u64 = 512 * 1024;

/// ln 2 in 16.16 fixed point.
const LN2_Q16: u64 = 45_426;

/// `-ln(u) × mean` for `u = (random + 1) / 2^32`, uniform in (0, 1], at least 1: a draw from an
/// exponential distribution of mean `mean` (below 2^24), in fixed point since BPF has no
/// floating point. `-ln(u) = -log2(u) × ln 2`, and `log2` of `random + 1` is its bit length
/// plus 16 fraction bits, each found by squaring the mantissa (exact to 2^-16, finer than Go's
/// `fastlog2` table).
#[inline(always)]
pub fn exponential_distance(random: u32, mean: u64) -> u64 {
    let random = u64::from(random) + 1; // 1..=2^32
    let whole = u64::from(63 - random.leading_zeros()); // floor(log2), 0..=32
    // The mantissa in [1, 2) as 1.31 fixed point.
    let mut mantissa = if whole >= 31 {
        random >> (whole - 31)
    } else {
        random << (31 - whole)
    };
    let mut fraction = 0u64;
    // Without a branch: one in each of the 16 steps gave the verifier 2^16 paths to walk,
    // past its limit once the native program's other paths were added.
    for _ in 0..16 {
        mantissa = (mantissa * mantissa) >> 31;
        // 1 when the square reached 2 (mantissa < 2^33 here).
        let carry = mantissa >> 32;
        mantissa >>= carry;
        fraction = (fraction << 1) | carry;
    }
    // -log2(random / 2^32) in 16.16, 0..=32.
    let minus_log2 = (32 << 16) - ((whole << 16) | fraction);
    let minus_ln = (minus_log2 * LN2_Q16) >> 16;
    ((minus_ln * mean) >> 16).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_slots_are_power_of_two_buckets() {
        for (size, bound) in [
            (1, 1),
            (2, 2),
            (3, 4),
            (8, 8),
            (9, 16),
            (4096, 4096),
            (4097, 8192),
        ] {
            assert_eq!(slot_bound(size_slot(size)), bound, "size {size}");
        }
        assert_eq!(size_slot(u64::MAX), EXACT_SLOTS - 1);
        assert_eq!(slot_bound(EXACT_SLOTS - 1), u64::MAX);
    }

    /// Over evenly spread random numbers the draws have the exponential distribution's mean
    /// and median (ln 2 × the mean), so samples scale back up as pprof assumes.
    #[test]
    fn distances_are_exponential() {
        let steps = 1u64 << 20;
        let mut draws: Vec<u64> = (0..steps)
            .map(|step| exponential_distance((step << 12) as u32 | 0x800, COUNTED_SAMPLE_BYTES))
            .collect();
        let mean = draws.iter().sum::<u64>() as f64 / steps as f64;
        let expected = COUNTED_SAMPLE_BYTES as f64;
        assert!((mean / expected - 1.0).abs() < 0.002, "mean {mean}");
        draws.sort_unstable();
        let median = draws[draws.len() / 2] as f64;
        assert!(
            (median / (expected * std::f64::consts::LN_2) - 1.0).abs() < 0.002,
            "median {median}"
        );
        assert_eq!(exponential_distance(u32::MAX, COUNTED_SAMPLE_BYTES), 1);
    }
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: #[repr(C)], Copy, integers only, explicit padding: every byte pattern is valid.
    unsafe impl aya::Pod for super::AllocKey {}
}
