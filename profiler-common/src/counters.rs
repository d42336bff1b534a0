//! Indexes of the kernel's per-CPU self-diagnostic counters (`PROBE_COUNTERS`).
//!
//! Each counts something the kernel side had to give up on, so that userspace can export it
//! instead of silently showing a smaller number.

/// A pause could not be sent because the ring buffer was full.
pub const STW_EVENT_LOST: u32 = 0;
/// `startTheWorldWithSema` returned without a recorded entry (mapscope attached mid-pause), or
/// with a frame whose copy of `w` did not read back as a pause.
pub const STW_UNMATCHED_START: u32 = 1;
/// The per-thread pending-pause table was full.
pub const STW_PENDING_FULL: u32 = 2;

/// An allocation sample could not be counted: its (stack, size) table was full.
pub const ALLOC_TABLE_FULL: u32 = 3;

/// A map event could not be counted: the map or site table was full.
pub const MAP_TABLE_FULL: u32 = 4;
/// A `makemap` call with a large hint could not be remembered until its return: the table of
/// calls in flight was full.
pub const MAP_UNMATCHED_CREATION: u32 = 5;

/// A GC cycle started without the trigger its goroutine asked with known: mapscope attached
/// while the cycle was being started, or more goroutines asked for cycles than the table holds.
pub const GC_TRIGGER_UNMATCHED: u32 = 6;

/// Number of counters; the size of the `PROBE_COUNTERS` array.
pub const COUNT: u32 = 7;

/// Names for the `reason` label of `mapscope_probe_events_dropped_total`, by index.
pub const NAMES: [&str; COUNT as usize] = [
    "ring_buffer_full",
    "unmatched_start",
    "pending_table_full",
    "alloc_table_full",
    "map_table_full",
    "map_unmatched_creation",
    "gc_trigger_unmatched",
];

/// Indexes of the per-CPU probe hit counters (`PROBE_HITS`): every program counts its own hits
/// by family, for `mapscope_probe_hits_total{probe}`.
pub const HIT_STW: u32 = 0;
pub const HIT_ALLOC: u32 = 1;
pub const HIT_MAP_EVENT: u32 = 2;
pub const HIT_MAP_CREATE: u32 = 3;
pub const HIT_MAP_ACCESS: u32 = 4;
pub const HIT_GC_START: u32 = 5;
pub const HIT_ALLOC_EXACT: u32 = 6;
/// Counted mode: the exact probes, governed, on programs whose runtime samples nothing.
pub const HIT_ALLOC_COUNT: u32 = 7;
/// Native allocations: the probes on a C allocator's entry points.
pub const HIT_NATIVE: u32 = 8;
pub const HIT_KINDS: u32 = 9;

/// Names for the `probe` label, by index.
pub const HIT_NAMES: [&str; HIT_KINDS as usize] = [
    "stw",
    "alloc",
    "map_event",
    "map_create",
    "map_access",
    "gc_start",
    "alloc_exact",
    "alloc_count",
    "native",
];
