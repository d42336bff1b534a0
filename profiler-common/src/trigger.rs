//! Why each GC cycle started: the kinds of `runtime.gcTrigger`, counted in the kernel.

/// `runtime.gcTriggerKind` (src/runtime/mgc.go), the same values from Go 1.19 to 1.27:
/// `gcTriggerHeap` (the heap reached its trigger, from `mallocgc`), `gcTriggerTime` (no cycle
/// for `forcegcperiod`, two minutes: `forcegchelper`) and `gcTriggerCycle` (`runtime.GC`, which
/// `debug.FreeOSMemory` also calls).
pub const TRIGGER_HEAP: u32 = 0;
pub const TRIGGER_TIME: u32 = 1;
pub const TRIGGER_CYCLE: u32 = 2;
/// Number of kinds; the size of the kernel's per-kind counter array.
pub const TRIGGER_KINDS: u32 = 3;

/// The `trigger` label of `mapscope_gc_cycles_by_trigger_total`, by kind. `gcTriggerCycle` is
/// `forced`, as runtime/metrics calls those cycles (`/gc/cycles/forced`).
pub const TRIGGER_NAMES: [&str; TRIGGER_KINDS as usize] = ["heap", "time", "forced"];
